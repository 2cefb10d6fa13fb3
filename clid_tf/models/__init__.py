"""Backbones: classifiers that return logits and penultimate features."""
