"""The meta scope: which classifier parameters take the virtual step (no TensorFlow here).

  full        every parameter (exact)
  last_layer  the classifier head only, with the features of theta reused (fast
              meta-reweighting)
  top:N       the head, any layers after the last block and the last N blocks (residual
              blocks, or a plain CNN's conv blocks); the parameters below them stay at
              theta in the virtual step, so the hypergradient is exact for that restricted
              step and its backward stops at the cut. Needs a backbone with named blocks;
              top:L (L blocks) is full.

`parse` is the one place that reads a scope string (the CLI's flag validator and the
model both call it); `block_variables` partitions a backbone's parameters by its blocks,
as top:N cuts them.
"""

from __future__ import annotations

from typing import NamedTuple

KINDS = ("full", "last_layer", "top")
HELP = "full, last_layer or top:N (N >= 1 blocks)"


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


def block_variables(model) -> list[list]:
    """The trainable variables of each block, input to output, of a model with
    `block_names` whose layers (at any depth) are named `<block>_...` and `stem_...` (or
    the model's `stem_prefixes`, e.g. keras.applications' 'conv1_').

    The stem's variables are listed with the first block, so that the lists partition
    every parameter below the last block; the layers after it (final BN, head) are in none.
    """
    names = model.block_names
    stem = tuple(getattr(model, "stem_prefixes", ("stem_",)))
    block_of = {}  # id(variable) -> its block
    for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
        block = names[0] if layer.name.startswith(stem) else next(
            (name for name in names if layer.name.startswith(f"{name}_")), None)
        block_of.update({id(v): block for v in layer.trainable_weights if block})
    groups = {name: [] for name in names}
    for variable in model.trainable_variables:  # each block's in the model's order
        if id(variable) in block_of:
            groups[block_of[id(variable)]].append(variable)
    return [groups[name] for name in names]
