"""Meta-nets: what a trainer asks of one, and the registry that builds one by name.

A meta-net turns each training sample's signal into its weight in the training loss: WNet
(Meta-Weight-Net, `wnet.py`) weights the per-sample cross-entropy by a function of the
loss; VRI (`vri.py`) rectifies the logits with per-class weights inferred from the
feature and the noisy label. Trainers, the label audit and the TensorBoard views use a
meta-net only through `MetaNet`, so a new one is one module with a class that has these
methods and one `register(name, builder)` call at its import; `--meta_net=NAME` then builds
it (`--extensions=MODULE` imports a module from outside clid_tf first).

Nothing here imports TensorFlow: the command line checks --meta_net before it starts.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol


class MetaNet(Protocol):
    """The contract of a meta-net (a keras.Model or Layer with these methods).

    Required:
      trainable_variables: phi, what the meta step updates.
      weighted_loss(logits [B, K], features [B, d], labels int [B], *, regularize=True)
        -> core.objectives.WeightedLoss: the batch's training loss, differentiable in
        theta through the logits and in phi; its `weights` ([B] or [B, K]) and
        `per_sample_weights()` ([B]) are monitored; `regularizer` (0 for none) is added
        to the meta loss. `regularize=False` (the actual step) may skip computing it.
      label_weights(logits [B, K], features [B, d], labels int [B]) -> float [B]: the
        weight of each sample's given label, without sampling noise: what the label
        audit reports beside its suspicion.

    Optional (a trainer that needs one refuses, in one line before training, a net
    without it):
      weighted_loss(..., sample_weight=float [B]): user sample weights s_i scaling each
        sample's term (passed only when a user gives some; a net without the argument
        is refused by fit with one message).
      weighted_loss(..., per_sample_loss=fn, rows=int [B]): the terms it weights are
        fn(logits it weights) [B] instead of CE on `labels` (DivideMix: the rows of its
        MixMatch loss, `labels` the argmax of the mixed targets); `rows` names the global
        rows of this replica's samples for a net that draws noise per sample.
      build_for(*, feature_dim, num_classes): sizes the net for the backbone and data it
        will be used with (called by the trainers before the first step).
      weight_of_loss(losses [n]) -> weights [n]: for a net that weights by the loss alone
        (WNet); TensorBoard then draws that function.
    """

    trainable_variables: list

    def weighted_loss(self, logits, features, labels, *, regularize: bool = True):
        ...

    def label_weights(self, logits, features, labels):
        ...


# builder(*, num_classes, feature_dim, seed, **options) -> a MetaNet. `options` are the
# command line's meta-net settings (vri_kl, normalize); a builder ignores the ones it has
# no use for.
Builder = Callable[..., MetaNet]

# name -> (builder, or "module:function" of a built-in imported when first built; the
# summary --help shows). The built-ins' modules import TensorFlow, so they are named here
# rather than registering themselves: --meta_net is checked before TensorFlow starts.
_REGISTRY: dict[str, tuple[Builder | str, str]] = {
    "wnet": ("clid_tf.metanets.wnet:build", "Meta-Weight-Net 1-100-1 on the per-sample "
             "loss, weights normalised over the batch"),
    "vri": ("clid_tf.metanets.vri:build", "Variational Rectification Inference: per-sample "
            "per-class weights on the logits from the feature and the noisy label"),
}


def register(name: str, builder: Builder, *, summary: str = "") -> None:
    """Makes `build(name, ...)` (and `--meta_net=name`) call `builder`; `summary` is the
    few words --help shows. A module that registers at import is loaded on the command
    line by --extensions=MODULE."""
    _REGISTRY[name] = (builder, summary)


def unregister(name: str) -> None:
    """Removes a registered meta-net (a test's toy one, say)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered meta-net names."""
    return tuple(_REGISTRY)


def described() -> str:
    """The registered meta-nets for --help: 'wnet (Meta-Weight-Net ...), vri (...)'."""
    return ", ".join(name + (f" ({summary})" if summary else "")
                     for name, (_, summary) in _REGISTRY.items())


def build(name: str, *, num_classes: int, feature_dim: int, seed: int | None = None,
          **options: Any) -> MetaNet:
    """A new meta-net of kind `name` for K = num_classes classes and d-dim features.

    Raises:
      ValueError: an unknown name (listing the registered ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown meta-net {name!r}; choose from {', '.join(_REGISTRY)}")
    builder = _REGISTRY[name][0]
    if isinstance(builder, str):  # a built-in, imported when first built
        module, _, function = builder.partition(":")
        builder = getattr(importlib.import_module(module), function)
    return builder(num_classes=num_classes, feature_dim=feature_dim, seed=seed, **options)
