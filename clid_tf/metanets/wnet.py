"""WNet, Meta-Weight-Net's meta-net: each sample's cross-entropy -> its loss weight."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import objectives
from clid_tf.core.objectives import WeightedLoss
from clid_tf.metanets.precision import metanet_dtype


def _torch_linear(units: int, fan_in: int, activation: str | None, seed: int | None,
                  name: str, dtype="float32") -> keras.layers.Dense:
    """Dense layer with PyTorch nn.Linear's default init: U(+-1/sqrt(fan_in)) for both."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(
        units, activation=activation, name=name, dtype=dtype,
        kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed),
        bias_initializer=keras.initializers.RandomUniform(
            -bound, bound, seed=None if seed is None else seed + 1))


@keras.saving.register_keras_serializable(package="clid_tf")
class WeightNet(keras.Model):
    """Meta-Weight-Net: per-sample loss -> weight in (0, 1). MLP 1 -> hidden -> 1.

    Call: losses float [B] (detached per-sample CE) -> raw weights float [B].
    `weighted_loss` normalises the weights to sum to one over the (global) batch
    (Meta-Weight-Net), or with `normalize=False` takes mean_i(w_i * CE_i) as it is: the
    loss-net of the semi-supervised trainers (as in the authors' USB fork:
    ruofanhu/CLID-MU@5cd0608, semi/semilearn/algorithms/fixmatch/fixmatch_lossnet.py:
    train_step()).

    Under a mixed global dtype policy it computes in float32 (`metanet_dtype`).
    """

    def __init__(self, hidden: int = 100, seed: int | None = None, normalize: bool = True,
                 **kwargs):
        kwargs.setdefault("dtype", metanet_dtype())
        super().__init__(**kwargs)
        self.units, self.seed, self.normalize = int(hidden), seed, bool(normalize)
        self.hidden = _torch_linear(hidden, 1, "relu", seed, "hidden", self.dtype_policy)
        self.out = _torch_linear(1, hidden, "sigmoid", None if seed is None else seed + 2,
                                 "out", self.dtype_policy)
        self.hidden.build((None, 1))
        self.out.build((None, self.units))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "hidden": self.units, "seed": self.seed,
                "normalize": self.normalize}

    def call(self, losses):
        losses = tf.cast(tf.stop_gradient(losses), self.compute_dtype)
        return tf.squeeze(self.out(self.hidden(losses[:, None])), axis=-1)

    def weighted_loss(self, logits: tf.Tensor, features: tf.Tensor, labels: tf.Tensor, *,
                      regularize: bool = True, sample_weight: tf.Tensor | None = None,
                      per_sample_loss=None, rows=None):
        """Meta-weighted training loss of a batch, differentiable in phi and theta.

        Args:
          logits: float [B, K] classifier outputs.
          features: float [B, d] (unused by WNet; part of the meta-net interface).
          labels: int [B] noisy training labels.
          sample_weight: optional float [B] user weights s_i that scale each term.
          per_sample_loss: logits [B, K] -> float [B], each sample's term l_i (default
            CE_i on `labels`; DivideMix's rows of its MixMatch loss).
          rows: unused (WNet draws no noise).

        Returns:
          WeightedLoss(sum_i s_i w~_i l_i with w~ = WNet(l) normalised to sum to one over
          the global batch, or with normalize=False mean_i s_i w_i l_i; raw weights [B],
          regularizer 0). s = 1 without sample weights.
        """
        del features, regularize, rows  # WNet has no regulariser and no noise
        losses = (objectives.per_sample_ce(logits, labels) if per_sample_loss is None
                  else per_sample_loss(logits))
        weights = tf.cast(self(losses), losses.dtype)
        scaled = losses if sample_weight is None else losses * tf.cast(sample_weight,
                                                                     losses.dtype)
        loss = (objectives.weighted_mean(scaled, weights) if self.normalize
                else distribute.global_mean(weights * scaled))
        return WeightedLoss(loss, weights, tf.zeros([], loss.dtype))

    def label_weights(self, logits: tf.Tensor, features: tf.Tensor,
                      labels: tf.Tensor) -> tf.Tensor:
        """The raw weight WNet(CE_i) in (0, 1) of each sample's CE on its label. [B]."""
        del features
        return self(objectives.per_sample_ce(logits, labels))

    def weight_of_loss(self, losses: tf.Tensor) -> tf.Tensor:
        """WNet's weighting function: losses float [n] -> raw weights float [n]."""
        return self(losses)


def build(*, num_classes: int, feature_dim: int, seed: int | None = None,
          normalize: bool = True, **options) -> WeightNet:
    """The registry's 'wnet' builder: a built WeightNet (K and d do not size it)."""
    del num_classes, feature_dim, options
    net = WeightNet(seed=seed, normalize=normalize)
    net(tf.zeros([1]))
    return net
