"""Per-sample training losses and the meta objectives: CE/MAE, CLID, entropy.

Pure functions of tensors. A meta objective maps one meta batch to a scalar that the
meta-net is trained to make the look-ahead classifier minimise.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from clid_tf.core import clid as clid_lib
from clid_tf.core import distribute

class WeightedLoss(NamedTuple):
    """What a meta-net makes of one training batch.

    loss: scalar training loss, differentiable in theta (through the logits) and phi.
    weights: the meta-net's output per sample, [B] (WNet) or [B, K] (VRI); monitoring.
    regularizer: scalar term of the meta-net's own objective (VRI's KL), added to the meta
      loss when phi is updated; 0 for WNet.
    """
    loss: tf.Tensor
    weights: tf.Tensor
    regularizer: tf.Tensor

    def per_sample_weights(self) -> tf.Tensor:
        """[B]: `weights` averaged over its trailing axes (VRI: over classes)."""
        return tf.reduce_mean(tf.reshape(self.weights, [tf.shape(self.weights)[0], -1]), axis=1)


# Meta objectives: name -> which label the meta batch must carry ('none' = label-free).
META_OBJECTIVE_LABELS = {
    "clid": "none",
    "entropy": "none",
    "ce_clean": "clean",
    "ce_noisy": "noisy",
    "mae": "noisy",
    "ce_sloss": "noisy",
    "mae_sloss": "noisy",
}


def per_sample_ce(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each sample. logits float [B, K], labels int [B] -> float [B]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits)


def per_sample_mae(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """1 - p_label of each sample. logits float [B, K], labels int [B] -> float [B]."""
    probs = tf.nn.softmax(logits, axis=-1)
    return 1.0 - tf.gather(probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)


def normalize_weights(weights: tf.Tensor) -> tf.Tensor:
    """w / sum(w) over the GLOBAL batch, or w unchanged when the sum is 0. float [B] -> [B].

    Under a multi-replica strategy the sum runs over all replicas, so each replica's
    weighted sum is its share of the single-device loss.
    """
    total = distribute.global_sum(tf.reduce_sum(weights))
    return tf.where(tf.equal(total, 0.0), weights, weights / tf.where(
        tf.equal(total, 0.0), tf.ones_like(total), total))


def weighted_mean(losses: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum_i w~_i * loss_i with w~ = normalize_weights(w). Both float [B] -> scalar."""
    return tf.reduce_sum(normalize_weights(weights) * losses)


def mean_entropy(logits: tf.Tensor) -> tf.Tensor:
    """Mean prediction entropy of a batch, a label-free control objective. [B, K] -> scalar."""
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1))


def meta_objective(name: str, *, tau: float) -> Callable[..., tf.Tensor]:
    """The meta loss `fn(features [n,d], logits [n,K], labels [n] or None) -> scalar`.

    Labels are the clean labels for 'ce_clean', the noisy ones for 'ce_noisy'/'mae_noisy',
    and are never read by the label-free 'clid' and 'entropy'. The function's `__name__`
    is `name` (the model logs it as `meta_<name>`).
    """
    if name == "clid":
        fn = lambda features, logits, labels: clid_lib.clid_xla(features, logits, tau=tau)
    elif name == "entropy":
        fn = lambda features, logits, labels: mean_entropy(logits)
    elif name in ("ce_clean", "ce_noisy", "ce_sloss"):
        fn = lambda features, logits, labels: tf.reduce_mean(per_sample_ce(logits, labels))
    elif name in ("mae", "mae_sloss"):
        fn = lambda features, logits, labels: tf.reduce_mean(per_sample_mae(logits, labels))
    else:
        raise ValueError(f"unknown meta objective {name!r}; choose from "
                         f"{sorted(META_OBJECTIVE_LABELS)}")
    fn.__name__ = name
    return fn
