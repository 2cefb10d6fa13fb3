"""The meta scope: which classifier parameters take the virtual step (no TensorFlow here).

  full        every parameter (exact)
  last_layer  the classifier head only, with the features of theta reused (fast
              meta-reweighting)
  top:N       the head, any layers after the last residual block and the last N residual
              blocks; the parameters below them stay at theta in the virtual step, so the
              hypergradient is exact for that restricted step and its backward stops at
              the cut. Needs a backbone with residual blocks; top:L (L blocks) is full.

`parse` is the one place that reads a scope string (the CLI's flag validator and the
model both call it).
"""

from __future__ import annotations

from typing import NamedTuple

KINDS = ("full", "last_layer", "top")
HELP = "full, last_layer or top:N (N >= 1 residual blocks)"


class MetaScope(NamedTuple):
    kind: str        # one of KINDS
    blocks: int = 0  # N of top:N (0 otherwise)

    def __str__(self) -> str:
        return f"top:{self.blocks}" if self.kind == "top" else self.kind


def parse(text: str) -> MetaScope:
    """'full', 'last_layer' or 'top:N' -> MetaScope; ValueError with one line otherwise."""
    if text in ("full", "last_layer"):
        return MetaScope(text)
    kind, sep, count = text.partition(":")
    if kind == "top" and sep and count.isdigit() and int(count) >= 1:
        return MetaScope("top", int(count))
    raise ValueError(f"meta scope must be {HELP}, got {text!r}")
