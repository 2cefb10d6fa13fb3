"""DivideMix's pure parts: co-guessing, co-refinement, MixMatch,
the loss terms, the lambda_u ramp and the actual step's gradient clipping.

Pure functions of tensors (numpy for the co-divide); the Keras model that composes them
is `clid_tf.trainers.dividemix.model.DivideMixModel`. Notation of one iteration of the network N
being trained, with the other network P:

  x1, x2 [B, ...]    two augmented views of the labeled batch, noisy labels y~, clean
                     probabilities w [B] (from P's GMM: the co-divide)
  u1, u2 [Bu, ...]   two views of the unlabeled batch
  t_x = sharpen(w onehot(y~) + (1 - w) mean(softmax N(x1), softmax N(x2)))    co-refine
  t_u = sharpen(mean of softmax N(u1), N(u2), P(u1), P(u2))                   co-guess
  X = cat(x1, x2, u1, u2), Y = cat(t_x, t_x, t_u, t_u)   (2B + 2Bu rows)
  l ~ Beta(alpha, alpha), l <- max(l, 1 - l); one permutation pi of ALL rows
  X~ = l X + (1 - l) X[pi],  Y~ = l Y + (1 - l) Y[pi]                         mixup
  loss = L_x + lambda(t) L_u + pen  on the logits z of X~ (rows [0, 2B) are "x")

Under tf.distribute each replica holds a share of every part; the rules of
`clid_tf.core.distribute` make every term here this replica's share of the global term.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from clid_tf.core import distribute


# ---------------------------------------------------------------- targets
def sharpen(probs: tf.Tensor, *, temperature: float) -> tf.Tensor:
    """p^(1/T) / sum_k p_k^(1/T), row-wise. probs [n, K] -> [n, K] (T = 1: unchanged)."""
    powered = tf.pow(probs, 1.0 / temperature)
    return powered / tf.reduce_sum(powered, axis=-1, keepdims=True)


def co_guess(own_u1: tf.Tensor, own_u2: tf.Tensor, other_u1: tf.Tensor,
             other_u2: tf.Tensor, *, temperature: float) -> tf.Tensor:
    """Label co-guessing: t_u = sharpen(mean of the four softmax probabilities), no gradient.

    Args:
      own_u1, own_u2: float [Bu, K] softmax of N on the two unlabeled views.
      other_u1, other_u2: float [Bu, K] softmax of P on them.
      temperature: T of `sharpen`.
    """
    mean = (own_u1 + own_u2 + other_u1 + other_u2) / 4.0
    return tf.stop_gradient(sharpen(mean, temperature=temperature))


def co_refine(own_x1: tf.Tensor, own_x2: tf.Tensor, labels: tf.Tensor,
              clean_prob: tf.Tensor, *, temperature: float) -> tf.Tensor:
    """Label co-refinement: t_x = sharpen(w y + (1 - w) mean(N's two views)), no gradient.

    Args:
      own_x1, own_x2: float [B, K] softmax of N on the two labeled views.
      labels: int [B] noisy labels y~.
      clean_prob: float [B] w, the other network's clean probability of each sample.
      temperature: T of `sharpen`.
    """
    onehot = tf.one_hot(labels, tf.shape(own_x1)[-1], dtype=own_x1.dtype)
    w = tf.cast(clean_prob, own_x1.dtype)[:, None]
    refined = w * onehot + (1.0 - w) * (own_x1 + own_x2) / 2.0
    return tf.stop_gradient(sharpen(refined, temperature=temperature))


# ---------------------------------------------------------------- mixup
def mix_draw(seed: tf.Tensor, *, rows: int | tf.Tensor, alpha: float, dtype=tf.float32):
    """The mixup draw of one iteration: (l = max(l', 1 - l'), l' ~ Beta(alpha, alpha);
    a permutation int32 [rows] of all rows), stateless in `seed` (int [2]).

    Every replica makes the same draw from the same seed, for the global batch.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    gammas = [tf.random.stateless_gamma([], seeds[i], alpha=alpha, dtype=dtype)
              for i in (0, 1)]
    lam = gammas[0] / (gammas[0] + gammas[1])
    permutation = tf.random.experimental.stateless_shuffle(tf.range(rows), seed=seeds[2])
    return tf.maximum(lam, 1.0 - lam), permutation


def mixup(inputs: tf.Tensor, targets: tf.Tensor, *, lam: tf.Tensor,
          permutation: tf.Tensor, rows: tf.Tensor | None = None):
    """(l X[r] + (1 - l) X[pi[r]], l Y[r] + (1 - l) Y[pi[r]]) for the rows r.

    Args:
      inputs: X [G, ...], every row of the (global) batch.
      targets: Y [G, K] soft targets.
      lam: scalar l.
      permutation: int [G] pi.
      rows: int [n] the rows to return (this replica's); None: all G in order.
    """
    rows = tf.range(tf.shape(inputs)[0]) if rows is None else rows
    partners = tf.gather(permutation, rows)
    lam = tf.convert_to_tensor(lam, dtype_hint=tf.float64)

    def mix(x):
        l = tf.cast(lam, x.dtype)
        return l * tf.gather(x, rows) + (1.0 - l) * tf.gather(x, partners)

    return mix(inputs), mix(targets)


def global_layout(parts: Sequence[tf.Tensor]):
    """The global batch of parts that every replica holds a share of, and where this
    replica's rows sit in it.

    Args:
      parts: this replica's rows of each part (e.g. x1, x2, u1, u2), each [n_p, ...].

    Returns:
      (cat of the parts gathered from all replicas [G, ...], the positions int32 [sum n_p]
      of this replica's rows of cat(parts) in it). On one device: (cat(parts), range).
      A part's global rows are its replicas' shares in replica order (tf.distribute splits
      a batch into consecutive blocks), so the global batch is the one-device batch.
    """
    gathered = [distribute.gather(p) for p in parts]
    positions, offset = [], 0
    for g in gathered:
        size = tf.shape(g)[0]
        positions.append(offset + distribute.replica_rows(tf.range(size)))
        offset += size
    return tf.concat(gathered, axis=0), tf.concat(positions, axis=0)


# ---------------------------------------------------------------- losses
class LossTerms(NamedTuple):
    """One batch's DivideMix loss, this replica's shares (scalars)."""
    total: tf.Tensor      # l_x + lambda_u * l_u + penalty
    l_x: tf.Tensor        # soft-target CE of the labeled rows
    l_u: tf.Tensor        # squared error of the unlabeled rows, mean over rows and classes
    penalty: tf.Tensor    # uniform-prior penalty on the raw logits


def soft_cross_entropy(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """-sum_k Y_k log softmax(z)_k of each row. [n, K], [n, K] -> [n]."""
    return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def squared_error(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """mean_k (softmax(z)_k - Y_k)^2 of each row (DivideMix's L_u). [n, K] -> [n]."""
    return tf.reduce_mean(tf.square(tf.nn.softmax(logits, axis=-1) - targets), axis=-1)


def uniform_penalty(logits: tf.Tensor) -> tf.Tensor:
    """sum_k pi_k log(pi_k / pbar_k), pi = 1/K, pbar = mean softmax over ALL global rows.

    >= 0, and 0 when the mean prediction is uniform. This replica's share: the global
    value / R (every replica differentiates the same value).
    """
    probs = tf.nn.softmax(logits, axis=-1)
    rows = distribute.global_sum(tf.cast(tf.shape(probs)[0], probs.dtype))
    mean = distribute.global_sum(tf.reduce_sum(probs, axis=0)) / rows
    k = tf.cast(tf.shape(probs)[-1], probs.dtype)
    penalty = tf.reduce_sum(tf.math.log(1.0 / k / mean) / k)
    return penalty / distribute.num_replicas()


def mixmatch_loss(rectified: tf.Tensor, logits: tf.Tensor, targets: tf.Tensor, *,
                  num_labeled: int, lambda_u: tf.Tensor) -> LossTerms:
    """DivideMix's loss of a mixed batch, in the virtual and the actual step.

    Args:
      rectified: float [n, K] the logits the data terms see (omega * z with a rectifier,
        else z).
      logits: float [n, K] the raw logits z (the penalty never sees omega).
      targets: float [n, K] the mixed soft targets Y~.
      num_labeled: rows [0, num_labeled) are the labeled ("x") rows of this replica.
      lambda_u: weight of l_u (the ramp's current value).
    """
    return loss_of_terms(*row_terms(rectified, targets, num_labeled=num_labeled), logits,
                         lambda_u=lambda_u)


def row_terms(logits: tf.Tensor, targets: tf.Tensor, *,
              num_labeled: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(soft CE of each labeled row [n_x], squared error of each unlabeled row [n_u]) of
    the mixed batch's logits [n, K] and targets [n, K]."""
    return (soft_cross_entropy(logits[:num_labeled], targets[:num_labeled]),
            squared_error(logits[num_labeled:], targets[num_labeled:]))


def loss_of_terms(ce: tf.Tensor, se: tf.Tensor, logits: tf.Tensor, *,
                  lambda_u: tf.Tensor) -> LossTerms:
    """LossTerms from `row_terms` (l_x, l_u their global means) and the penalty of the raw
    `logits`."""
    l_x, l_u = distribute.global_mean(ce), distribute.global_mean(se)
    penalty = uniform_penalty(logits)
    return LossTerms(l_x + tf.cast(lambda_u, l_u.dtype) * l_u + penalty, l_x, l_u, penalty)


def scaled_rows(ce: tf.Tensor, se: tf.Tensor, *, lambda_u: tf.Tensor) -> tf.Tensor:
    """Each row's term of L_x + lambda L_u, scaled so that their global mean is that sum:
    n / n_x * CE for the labeled rows, lambda * n / n_u * the squared error for the
    unlabeled ones (n_x, n_u: this replica's rows of each part, the same on every
    replica). What a meta-net weights in DivideMix. [n_x], [n_u] -> [n]."""
    n_x, n_u = (tf.cast(tf.shape(t)[0], ce.dtype) for t in (ce, se))
    return tf.concat([ce * (n_x + n_u) / n_x,
                      se * tf.cast(lambda_u, se.dtype) * (n_x + n_u) / n_u], axis=0)


def row_losses(logits: tf.Tensor, targets: tf.Tensor, *, num_labeled: int,
               lambda_u: tf.Tensor) -> tf.Tensor:
    """`scaled_rows` of the mixed batch's logits [n, K] and targets [n, K] -> [n]."""
    return scaled_rows(*row_terms(logits, targets, num_labeled=num_labeled),
                       lambda_u=lambda_u)


def lambda_ramp(t, *, lambda_u: float, warmup: float, rampup: float):
    """lambda_u * clip((t - warmup) / rampup, 0, 1) at training time t = epoch + step
    fraction (a step at t >= warmup for rampup 0). Python floats or tensors."""
    if rampup <= 0:
        return lambda_u * tf.cast(t >= warmup, tf.float32)
    return lambda_u * tf.clip_by_value((t - warmup) / rampup, 0.0, 1.0)


def negative_entropy(logits: tf.Tensor) -> tf.Tensor:
    """mean over rows of sum_k p_k log p_k (DivideMix's warm-up confidence penalty for
    asymmetric noise); this replica's share of the global mean. [n, K] -> scalar."""
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return distribute.global_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1))


def clip_by_global_norm(grads: Sequence[tf.Tensor], max_norm: float):
    """torch.nn.utils.clip_grad_norm_: g * min(1, c / (||g|| + 1e-6)), ||g|| the norm of
    the GLOBAL gradient (replica shares summed); returns (clipped shares, ||g||).
    max_norm <= 0 leaves the gradients as they are."""
    if max_norm <= 0:
        return list(grads), tf.constant(0.0)
    total = distribute.global_sum(list(grads))
    norm = tf.linalg.global_norm(total)
    factor = tf.minimum(tf.constant(1.0, norm.dtype), max_norm / (norm + 1e-6))
    return [g * tf.cast(factor, g.dtype) for g in grads], norm


# ---------------------------------------------------------------- co-divide (numpy)
class PartOf(NamedTuple):
    """The part of the training samples one network trains on in a DivideMix epoch."""
    labeled: np.ndarray     # int64 positions (into the training samples) of the labeled part
    clean_prob: np.ndarray  # float64 [N] the other network's clean probability of each sample
    unlabeled: np.ndarray   # int64 positions of the rest


def co_divide(clean_probs: Sequence[np.ndarray], *, threshold: float) -> list[PartOf]:
    """Each network trains with the OTHER network's division.

    Args:
      clean_probs: [prob1, prob2], float [N] each network's GMM clean probability.
      threshold: p_threshold; a sample is labeled for net k when prob_other > threshold
        (strict, as DivideMix).

    Returns:
      [part of net 1 (from prob2), part of net 2 (from prob1)].
    """
    parts = []
    for other in (clean_probs[1], clean_probs[0]):
        other = np.asarray(other, np.float64)
        chosen = other > threshold
        parts.append(PartOf(np.flatnonzero(chosen).astype(np.int64), other,
                            np.flatnonzero(~chosen).astype(np.int64)))
    return parts


def division_stats(part: PartOf, is_clean: np.ndarray | None) -> dict[str, float]:
    """Size of the labeled part and, with the truth known (is_clean bool [N]: noisy label
    == true label), its precision (clean share) and recall (share of the clean samples
    it holds)."""
    stats = {"labeled": float(len(part.labeled))}
    if is_clean is not None:
        is_clean = np.asarray(is_clean, bool)
        chosen = is_clean[part.labeled]
        stats["labeled_precision"] = float(chosen.mean()) if len(chosen) else float("nan")
        stats["labeled_recall"] = (float(chosen.sum() / is_clean.sum()) if is_clean.any()
                                   else float("nan"))
    return stats
