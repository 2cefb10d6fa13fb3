"""What the trainers' Keras models share: the checks of their meta-learning settings, a
`compile` with one optimizer per network and one per meta-net, the checkpoint parts, the
inference-mode `test_step` and the monitoring of meta weights on clean and noisy labels.

`MetaReweightModel` (one network), `DivideMixModel` (two) and `FixMatchModel` (one, plus
its EMA copy) subclass `TrainerModel`; each says which networks it trains with which
meta-nets (`networks`), which network(s) it predicts with (`predicting`), and keeps its
own `train_step`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import tensorflow as tf

from clid_tf.core import lookahead
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.models import backbones


def meta_objective_of(meta_objective: str | Callable[..., tf.Tensor], *, tau: float,
                      name: str | None = None) -> tuple[Callable[..., tf.Tensor], str]:
    """(fn(features [n, d], logits [n, K], labels [n] or None) -> scalar, the name logged
    as `meta_<name>`): a named objective of `objectives.meta_objective` or a function."""
    if isinstance(meta_objective, str):
        return objectives.meta_objective(meta_objective, tau=tau), name or meta_objective
    given = getattr(meta_objective, "__name__", "objective")
    return meta_objective, name or ("objective" if given == "<lambda>" else given)


def check_virtual_step(virtual_step: str) -> None:
    """ValueError unless `virtual_step` is one of `lookahead.VIRTUAL_STEPS`."""
    if virtual_step not in lookahead.VIRTUAL_STEPS:
        raise ValueError(f"unknown virtual step {virtual_step!r}; choose from "
                         f"{lookahead.VIRTUAL_STEPS}")


def size_meta_net(meta_net, backbone: keras.Model) -> None:
    """Sizes a meta-net that is sized by the data (VRI: features and classes) for
    `backbone`; a meta-net without `build_for` is left as it is."""
    if meta_net is not None and hasattr(meta_net, "build_for"):
        meta_net.build_for(feature_dim=backbone.feature_dim,
                           num_classes=int(backbone.outputs[0].shape[-1]))


class TrainerModel(keras.Model):
    """The shared parts of a trainer's Keras model (module docstring).

    Subclasses set `virtual_step` before `compile` and define:
      networks(): [(backbone, meta-net or None)] in training order; the optimizers of
        `compile` pair with them.
      predicting(): the backbones whose mean logits are the model's prediction.
    """

    virtual_step = "sgd"

    # ------------------------------------------------------------ what is trained
    def networks(self) -> list[tuple[keras.Model, keras.Model | None]]:
        raise NotImplementedError

    def predicting(self) -> list[keras.Model]:
        raise NotImplementedError

    @property
    def net_optimizers(self) -> list:
        """The networks' optimizers, in `networks()` order (empty before `compile`)."""
        return getattr(self, "_net_optimizers", [])

    @property
    def meta_optimizers(self) -> list:
        """The meta-nets' optimizers (None for a network without one; before `compile`,
        None for every network)."""
        return getattr(self, "_meta_optimizers", [None] * len(self.networks()))

    # ------------------------------------------------------------ compile
    def _compile_optimizers(self, optimizers: Sequence, meta_optimizers: Sequence | None,
                            **kwargs) -> None:
        """One optimizer per network and one per meta-net (None entries for none), each
        built on its variables; a copy of the real step must be possible where the virtual
        step is the optimizer's ('optimizer')."""
        pairs = self.networks()
        optimizers = list(optimizers)
        meta_optimizers = [None] * len(pairs) if meta_optimizers is None else list(
            meta_optimizers)
        if len(optimizers) != len(pairs) or len(meta_optimizers) != len(pairs):
            raise ValueError(f"{len(pairs)} networks need {len(pairs)} optimizers and meta "
                             f"optimizers; got {len(optimizers)} and {len(meta_optimizers)}")
        if any(meta_net is not None and meta_optimizer is None
               for (_, meta_net), meta_optimizer in zip(pairs, meta_optimizers)):
            raise ValueError("a meta-net needs a meta optimizer: compile(optimizer, "
                             "meta_optimizer)")
        super().compile(optimizer=optimizers[0], **kwargs)
        self._net_optimizers, self._meta_optimizers = optimizers, meta_optimizers
        for (net, meta_net), optimizer, meta_optimizer in zip(pairs, optimizers,
                                                              meta_optimizers):
            optimizer.build(net.trainable_variables)
            if meta_net is not None:
                meta_optimizer.build(meta_net.trainable_variables)
                if self.virtual_step == "optimizer":
                    lookahead.inner_optimizer(optimizer)  # refuses what it cannot copy

    # ------------------------------------------------------------ checkpoints
    def checkpoint_parts(self) -> dict:
        """The trackables a resumable checkpoint holds: every network, meta-net and
        optimizer ('backbone', 'optimizer', 'meta_net', 'meta_optimizer'; numbered from 1
        when there are several networks)."""
        pairs = self.networks()
        parts = {}
        for k, ((net, meta_net), optimizer, meta_optimizer) in enumerate(zip(
                pairs, self.net_optimizers, self.meta_optimizers)):
            suffix = "" if len(pairs) == 1 else str(k + 1)
            parts[f"backbone{suffix}"] = net
            parts[f"optimizer{suffix}"] = optimizer
            if meta_net is not None:
                parts[f"meta_net{suffix}"] = meta_net
                parts[f"meta_optimizer{suffix}"] = meta_optimizer
        return parts

    # ------------------------------------------------------------ inference
    def predict_logits(self, images, training: bool = False) -> tf.Tensor:
        """Raw inputs [B, ...] -> the mean logits [B, K] of the predicting networks."""
        nets = self.predicting()
        return tf.add_n([net(images, training=training)[0] for net in nets]) / len(nets)

    def _init_test_metrics(self) -> None:
        self.test_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.test_loss = keras.metrics.Mean(name="loss")

    def test_step(self, data):
        """`evaluate` on (raw inputs [B, ...], int labels [B]): accuracy and mean CE of
        the prediction (`predict_logits`, inference mode)."""
        images, labels = data
        logits = self.predict_logits(images)
        self.test_accuracy.update_state(labels, logits)
        self.test_loss.update_state(objectives.per_sample_ce(logits, labels))
        return {"accuracy": self.test_accuracy.result(), "loss": self.test_loss.result()}

    # ------------------------------------------------------------ monitoring
    @staticmethod
    def weight_trackers() -> dict[str, keras.metrics.Mean]:
        """The trackers of the mean meta weight of clean and of noisy labels."""
        return {"clean": keras.metrics.Mean(name="weight_clean"),
                "noisy": keras.metrics.Mean(name="weight_noisy")}

    @staticmethod
    def log_weights(trackers: dict, weights: tf.Tensor, batch: dict) -> list:
        """Updates the clean/noisy weight trackers from per-sample weights [B] when the batch
        says which labels are noisy ('is_noisy', ground truth: monitoring only); returns
        the trackers updated."""
        if "is_noisy" not in batch:
            return []
        noisy = tf.cast(batch["is_noisy"], weights.dtype)
        trackers["noisy"].update_state(weights, sample_weight=noisy)
        trackers["clean"].update_state(weights, sample_weight=1.0 - noisy)
        return [trackers["clean"], trackers["noisy"]]


def checked_classifier(backbone: keras.Model, meta_scope: str) -> keras.Model:
    """A user's classifier as (logits, features) (`models.backbones.as_classifier`), with
    the meta scope checked against it (top:N needs N residual blocks)."""
    classifier = backbones.as_classifier(backbone)
    virtual.check_scope(classifier, meta_scope)
    return classifier
