"""The single-network meta trainer (WNet or VRI through a virtual step)."""
