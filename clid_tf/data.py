"""tf.data pipelines: the zipped (training batch, meta batch) stream and the test set."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


def train_stream(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 steps_per_epoch: int | None = None, first_epoch: int = 0,
                 is_noisy: np.ndarray | None = None, meta_images: np.ndarray | None = None,
                 meta_labels: np.ndarray | None = None, meta_batch_size: int = 100,
                 augment: Callable[..., tf.Tensor] | None = None,
                 meta_stream: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Endless stream of {'train': {...}, 'meta': {...}} batches for `MetaReweightModel.fit`.

    Epoch e (counted from `first_epoch`) is a function of (seed, e) alone: its shuffles and
    augmentation draws are seeded by the epoch number, so a run resumed at epoch e sees the
    same batches as an uninterrupted one. Batches have static shapes (drop_remainder) for XLA.

    Args:
      images: [N, ...] raw training inputs; labels: int [N] noisy training labels.
      steps_per_epoch: batches per epoch (default N // batch_size, one pass).
      first_epoch: epoch the stream starts at (0-based).
      is_noisy: bool [N] ground truth for monitoring, or None when unknown.
      meta_images: [M, ...] meta-set inputs, or None (no meta-net).
      meta_labels: int [M] labels for labelled meta objectives, or None (label-free: the
        meta batches then carry no labels at all).
      augment: batch augmentation (clid_tf.augment.build) applied to training and meta
        images alike, as in the reference; None for none.
      meta_stream: a ready meta-batch stream (e.g. clid_tf.sloss.DynamicMetaSet.stream)
        instead of meta_images/meta_labels.
    """
    steps_per_epoch = steps_per_epoch or len(images) // batch_size
    train = {"image": images, "label": labels.astype(np.int32)}
    if is_noisy is not None:
        train["is_noisy"] = is_noisy.astype(bool)
    stream = _epochs(train, batch_size, seed, first_epoch, steps_per_epoch, augment)
    if meta_images is not None:
        if meta_stream is not None:
            raise ValueError("give meta_images or meta_stream, not both")
        meta = {"image": meta_images}
        if meta_labels is not None:
            meta["label"] = meta_labels.astype(np.int32)
        meta_stream = _epochs(meta, meta_batch_size, seed + 1, first_epoch, steps_per_epoch,
                              augment)
    if meta_stream is None:
        return stream.map(lambda t: {"train": t}).prefetch(tf.data.AUTOTUNE)
    return (tf.data.Dataset.zip(stream, meta_stream)
            .map(lambda t, m: {"train": t, "meta": m}).prefetch(tf.data.AUTOTUNE))


def _epochs(arrays: dict, batch_size: int, seed: int, first_epoch: int,
            steps_per_epoch: int, augment) -> tf.data.Dataset:
    """Endless batches, `steps_per_epoch` per epoch, each epoch seeded by its number."""
    n = len(next(iter(arrays.values())))
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the {n} samples it draws from")
    tensors = {key: tf.constant(value) for key, value in arrays.items()}
    passes = -(-steps_per_epoch * batch_size // n)  # permutations needed for one epoch

    def one_epoch(epoch):
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + epoch
        order = tf.data.Dataset.range(passes).map(
            lambda p: tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, p]))).unbatch()
        batches = (order.batch(batch_size, drop_remainder=True)
                   .take(steps_per_epoch)
                   .map(lambda ix: _images_to_float(
                       {key: tf.gather(t, ix) for key, t in tensors.items()})))
        if augment is None:
            return batches
        step_seeds = tf.data.Dataset.range(steps_per_epoch).map(
            lambda step: tf.stack([epoch_seed, step]))
        return tf.data.Dataset.zip(batches, step_seeds).map(
            lambda b, s: {**b, "image": augment(b["image"], stateless_seed=s)})

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> tf.data.Dataset:
    """(images float32 [b, ...], labels int32 [b]) batches in order, for evaluate/predict."""
    return (tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
            .batch(batch_size)
            .map(lambda x, y: (tf.cast(x, tf.float32), y))
            .prefetch(tf.data.AUTOTUNE))


def _images_to_float(batch: dict) -> dict:
    """Raw inputs stay compact (uint8) in the pipeline and become float32 per batch."""
    return {k: tf.cast(v, tf.float32) if k == "image" else v for k, v in batch.items()}
