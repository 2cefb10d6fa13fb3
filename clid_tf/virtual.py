"""The functional look-ahead of meta-learning: theta' = theta - lr * grad L_f(theta, phi).

The backbone runs through Keras 3 `stateless_call` with explicit weight tensors, so the
virtual and meta forwards use batch statistics (training mode) while the real model's
BatchNorm moving statistics stay untouched, as with the throw-away model copy of the
PyTorch reference (METHOD.md sections 2.0 and 11).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf


class MetaResult(NamedTuple):
    """Outputs of one meta-gradient computation."""
    meta_loss: tf.Tensor          # scalar meta objective at theta' (plus the regularizer)
    meta_grads: list[tf.Tensor]   # d meta_loss / d phi, one per meta-net variable
    virtual_loss: tf.Tensor       # scalar L_f(theta, phi) before the meta update


def forward(model: keras.Model, trainable: Sequence[tf.Tensor],
            non_trainable: Sequence[tf.Tensor], images: tf.Tensor, *, training: bool = True):
    """Run `model` with the given weight tensors; returns (logits, features, new_non_trainable).

    The returned non-trainable values (BN moving statistics) are the updated copies; the
    model's own variables are not assigned.
    """
    (logits, features), new_non_trainable = model.stateless_call(
        list(trainable), list(non_trainable), images, training=training)
    return logits, features, new_non_trainable


def lookahead(params: Sequence[tf.Tensor], grads: Sequence[tf.Tensor | None],
              lr: tf.Tensor) -> list[tf.Tensor]:
    """Plain SGD step (no momentum, no weight decay): p - lr * g; None grads leave p as is."""
    return [p if g is None else p - tf.cast(lr, p.dtype) * g for p, g in zip(params, grads)]


def meta_gradients(backbone: keras.Model, meta_net: keras.Model, batch: dict,
                   meta_batch: dict, *, lr: tf.Tensor,
                   meta_objective: Callable[..., tf.Tensor]) -> MetaResult:
    """Exact hypergradient d L_meta(theta'(phi)) / d phi by reverse-over-reverse tapes.

    Args:
      backbone: classifier, images -> (logits [B, K], features [B, d]).
      meta_net: model with `weighted_loss(logits, features, labels) -> WeightedLoss`.
      batch: training batch {'image': [B, ...], 'label': int [B] noisy labels}.
      meta_batch: {'image': [n, ...]} plus 'label' [n] only for labelled objectives.
      lr: current scheduled classifier learning rate (the virtual-step size).
      meta_objective: fn(features [n, d], logits [n, K], labels or None) -> scalar.
    """
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    phi = meta_net.trainable_variables
    with tf.GradientTape() as outer:
        # Virtual step: L_f(theta, phi) and its gradient, recorded for second order.
        with tf.GradientTape() as inner:
            inner.watch(theta)
            logits, features, _ = forward(backbone, theta, frozen, batch["image"])
            virtual = meta_net.weighted_loss(logits, features, batch["label"])
        theta_prime = lookahead(theta, inner.gradient(virtual.loss, theta), lr)
        # Meta step: the look-ahead classifier on the meta batch.
        meta_logits, meta_features, _ = forward(backbone, theta_prime, frozen,
                                                meta_batch["image"])
        meta_loss = meta_objective(meta_features, meta_logits, meta_batch.get("label"))
        meta_loss += tf.cast(virtual.regularizer, meta_loss.dtype)
    return MetaResult(meta_loss, outer.gradient(meta_loss, phi), virtual.loss)
