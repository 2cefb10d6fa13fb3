"""CLID: cross-layer information divergence label-free, as the authors' `clid_loss`
(ruofanhu/CLID-MU@5cd0608, utilities.py).

CLID compares two similarity structures of one meta batch: cosine similarities of the
last hidden layer (features, the detached target S) and of the softmax predictions (Q,
which carries the gradient). Pure TensorFlow; no Keras, no flags.
"""

from __future__ import annotations

import tensorflow as tf

EPS = 1e-7


def clid(features: tf.Tensor, logits: tf.Tensor, *, tau: float = 0.5,
         eps: float = EPS) -> tf.Tensor:
    """CLID of one meta batch, exactly as `clid_loss` (ruofanhu/CLID-MU@5cd0608, utilities.py).

    S = stop_gradient(softmax_rows(relu_mask(cos(h_i, h_j) / tau)))   feature side, target
    W = <p_i/|p_i|, p_j/|p_j|>,  Q = W / stop_gradient(rowsum(W))     prediction side
    CLID = mean_i sum_j Q_ij * -log(S_ij + eps)

    Negative feature similarities are set to 0 (not -inf), so they keep softmax mass
    exp(0); the diagonal is kept on both sides. Features get no gradient; logits get
    dCLID/dW_ij = -log(S_ij + eps) / (n * rowsum_i(W)).

    Args:
      features: float [n, d], last-hidden-layer (pooled penultimate) activations.
      logits: float [n, K], final-layer outputs for the same samples.
      tau: temperature dividing the feature cosine similarities only.
      eps: added inside the log.

    Returns:
      Scalar CLID, about log(n) in magnitude, in the dtype of `logits`.
    """
    features = tf.stop_gradient(tf.convert_to_tensor(features))
    logits = tf.convert_to_tensor(logits)
    features = tf.cast(features, logits.dtype)
    # tf.math.l2_normalize clips the squared norm, so epsilon=1e-24 equals
    # torch's F.normalize clip of the norm at 1e-12.
    unit_features = tf.math.l2_normalize(features, axis=1, epsilon=1e-24)
    feature_sim = tf.matmul(unit_features, unit_features, transpose_b=True) / tau
    feature_sim = tf.maximum(feature_sim, tf.zeros_like(feature_sim))
    target = tf.stop_gradient(tf.nn.softmax(feature_sim, axis=-1))

    probs = tf.nn.softmax(logits, axis=-1)
    unit_probs = tf.math.l2_normalize(probs, axis=1, epsilon=1e-24)
    pred_sim = tf.matmul(unit_probs, unit_probs, transpose_b=True)
    weighting = pred_sim / tf.stop_gradient(tf.reduce_sum(pred_sim, axis=1, keepdims=True))

    cross_entropy = tf.reduce_sum(weighting * -tf.math.log(target + eps), axis=1)
    return tf.reduce_mean(cross_entropy)


# One trace per meta batch shape (no reduce_retracing): a shape-relaxed trace, once made,
# is reused everywhere, and XLA cannot compile its gradient inside the tf.cond of an
# XLA-compiled train step with meta_every > 1 (shapes must be compile-time constants).
clid_xla = tf.function(clid, jit_compile=True)
clid_xla.__doc__ = "`clid` compiled with XLA (jit_compile=True); same arguments and result."
