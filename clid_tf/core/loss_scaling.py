"""Dynamic loss scaling of float16 training through the CLID-MU step (mixed_float16 only).

`MetaReweightModel.compile` wraps both optimizers of a float16 backbone in
keras.optimizers.LossScaleOptimizer, which gives two dynamic scales:

  S_t (classifier optimizer) scales every backward pass of the training batch: the
      virtual step backprops S_t dz and divides by S_t, the actual step backprops S_t dz
      and the optimizer divides (the weight decay joins as wd S_t theta).
  S_m (meta optimizer) scales the meta objective. The second-order pass of the 'tape' and
      'recompute' routes runs through the float16 backward of the training batch with
      cotangents D J v; plain autodiff would scale them by S_m / S_t, i.e. not at all. The
      virtual step therefore multiplies dz by S_t and divides the gradient by S_t with ops
      whose backward passes the cotangent on unchanged (`_rescale_value_only`): the
      virtual step's value and derivative are the unscaled ones, every cotangent of the
      second-order pass carries S_m, and each route returns S_m times the true
      hypergradient, which the meta optimizer's LossScaleOptimizer removes.

`LossScaling` holds both scales of one train step; with `apply` (apply-or-skip) this
module is the only place that handles them: scaling, unscaling and the finiteness check.
Without a LossScaleOptimizer the scales are None, every method is the identity and
`apply` a plain `optimizer.apply` with weight decay, so callers need no branches.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import lookahead


def current_scale(optimizer) -> tf.Tensor | None:
    """The dynamic scale of a LossScaleOptimizer (a value read now), else None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.convert_to_tensor(optimizer.dynamic_scale)
    return None


def logged_scales(optimizer, meta_optimizer=None) -> dict[str, tf.Tensor]:
    """{'loss_scale': S_t, 'meta_loss_scale': S_m} for the optimizers that have one."""
    scales = {"loss_scale": current_scale(optimizer),
              "meta_loss_scale": current_scale(meta_optimizer)}
    return {name: scale for name, scale in scales.items() if scale is not None}


def _rescale_value_only(tensors: list[tf.Tensor], factor: tf.Tensor) -> list[tf.Tensor]:
    """Forward: t * factor for each t. Backward: the cotangent unchanged (not * factor).

    A pair of these around a float16 backward pass (factor S, then 1/S) scales the values
    inside it by S while the derivative through the pair stays the true one, so the
    second-order pass through it keeps whatever scale its own cotangents carry.
    """
    @tf.custom_gradient
    def rescale(*values):
        return [v * tf.cast(factor, v.dtype) for v in values], lambda *dys: list(dys)
    return rescale(*tensors)


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Whether every element of every tensor is finite (a scalar bool)."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


class LossScaling(NamedTuple):
    """The loss scales of one train step (scalar tensors read when it starts, or None)."""
    train: tf.Tensor | None = None  # S_t: the classifier optimizer's scale
    meta: tf.Tensor | None = None   # S_m: the meta optimizer's scale

    @classmethod
    def of(cls, optimizer, meta_optimizer=None) -> LossScaling:
        """The current scales of the optimizers that are LossScaleOptimizers."""
        return cls(current_scale(optimizer), current_scale(meta_optimizer))

    # ------------------------------------------------------- virtual step, hypergradient
    def unscaled_backward(self, backward: Callable[[tf.Tensor], list[tf.Tensor]],
                          dz: tf.Tensor) -> list[tf.Tensor]:
        """backward(dz) run as backward(S_t dz) / S_t, both rescalings value-only: the
        float16 backward sees scaled values, the result and its derivative are unscaled."""
        if self.train is None:
            return backward(dz)
        [scaled_dz] = _rescale_value_only([dz], self.train)
        return _rescale_value_only(backward(scaled_dz), 1.0 / self.train)

    def meta_seed(self, dtype) -> tf.Tensor:
        """The cotangent that starts the meta backward: S_m (1 without scaling)."""
        return tf.cast(1.0 if self.meta is None else self.meta, dtype)

    def scale_meta(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Unscaled meta gradients times S_m (what the meta optimizer expects)."""
        return list(grads) if self.meta is None else [
            g * tf.cast(self.meta, g.dtype) for g in grads]

    def finite(self, grads: Sequence[tf.Tensor]) -> tf.Tensor | None:
        """Whether the (virtual step's) gradients are finite; None without scaling."""
        return None if self.train is None else all_finite(grads)

    # ------------------------------------------------------------------- actual step
    def scale_train(self, x: tf.Tensor) -> tf.Tensor:
        """x * S_t: the logit gradient or loss of a training backward that an optimizer
        with scale S_t applies."""
        return x if self.train is None else x * tf.cast(self.train, x.dtype)


def apply(optimizer, grads: Sequence[tf.Tensor], variables, *,
          weight_decay: float = 0.0, decayed: Sequence[bool] | None = None,
          keep_scale: tf.Tensor | None = None) -> None:
    """optimizer.apply of gradients that carry the optimizer's scale, with the coupled
    weight decay (on the `decayed` variables; default all) added at the same scale.

    Optimizers sum replica gradients, so each replica adds its 1/R share of the decay.
    Under loss scaling an overflow on any replica makes every replica skip and the
    scale halve (Keras' rule); `keep_scale` (a bool tensor) marks an overflow that is
    not this scale's doing (the meta step after an overflowed virtual step): skipped,
    but the scale and its growth counter are restored.
    """
    scale = current_scale(optimizer)  # what the gradients carry: only this apply moves it
    share = weight_decay / distribute.num_replicas()
    if scale is None:
        if weight_decay:
            grads = lookahead.with_decay(grads, variables, share, decayed)
        optimizer.apply(grads, variables)
        return
    grads = distribute.spread_non_finite(grads)
    if weight_decay:
        grads = lookahead.with_decay(grads, variables, share * scale, decayed)
    if keep_scale is not None:
        counter = tf.convert_to_tensor(optimizer.step_counter)
    optimizer.apply(grads, variables)
    if keep_scale is not None:
        optimizer.dynamic_scale.assign(tf.where(keep_scale, scale, optimizer.dynamic_scale))
        optimizer.step_counter.assign(tf.where(keep_scale, counter, optimizer.step_counter))
