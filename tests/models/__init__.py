"""Tests of clid_tf.models."""
