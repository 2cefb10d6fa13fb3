"""tf.data pipelines: the zipped (training batch, meta batch) stream and the test set."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


def train_stream(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 is_noisy: np.ndarray | None = None, meta_images: np.ndarray | None = None,
                 meta_labels: np.ndarray | None = None, meta_batch_size: int = 100,
                 augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
                 meta_stream: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Endless stream of {'train': {...}, 'meta': {...}} batches for `MetaReweightModel.fit`.

    Args:
      images: [N, ...] raw training inputs; labels: int [N] noisy training labels.
      is_noisy: bool [N] ground truth for monitoring, or None when unknown.
      meta_images: [M, ...] meta-set inputs, or None (no meta-net).
      meta_labels: int [M] labels for labelled meta objectives, or None (label-free: the
        meta batches then carry no labels at all).
      augment: batch augmentation (clid_tf.augment.build) applied to training and meta
        images alike, as in the reference; None for none.
      meta_stream: a ready meta-batch stream (e.g. clid_tf.sloss.DynamicMetaSet.stream)
        instead of meta_images/meta_labels.
    Each epoch is a reshuffle; batches have static shapes (drop_remainder) for XLA.
    """
    train = {"image": images, "label": labels.astype(np.int32)}
    if is_noisy is not None:
        train["is_noisy"] = is_noisy.astype(bool)
    stream = _endless(train, batch_size, seed, augment)
    if meta_images is not None:
        if meta_stream is not None:
            raise ValueError("give meta_images or meta_stream, not both")
        meta = {"image": meta_images}
        if meta_labels is not None:
            meta["label"] = meta_labels.astype(np.int32)
        meta_stream = _endless(meta, meta_batch_size, seed + 1, augment)
    if meta_stream is None:
        return stream.map(lambda t: {"train": t}).prefetch(tf.data.AUTOTUNE)
    return (tf.data.Dataset.zip(stream, meta_stream)
            .map(lambda t, m: {"train": t, "meta": m}).prefetch(tf.data.AUTOTUNE))


def _endless(arrays: dict, batch_size: int, seed: int, augment) -> tf.data.Dataset:
    n = len(next(iter(arrays.values())))
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the {n} samples it draws from")
    stream = (tf.data.Dataset.from_tensor_slices(arrays)
              .shuffle(n, seed=seed, reshuffle_each_iteration=True)
              .repeat()
              .batch(batch_size, drop_remainder=True)
              .map(_images_to_float, num_parallel_calls=tf.data.AUTOTUNE))
    if augment is not None:  # sequential: the seeded draws then follow the batch order
        stream = stream.map(lambda b: {**b, "image": augment(b["image"])})
    return stream


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> tf.data.Dataset:
    """(images float32 [b, ...], labels int32 [b]) batches in order, for evaluate/predict."""
    return (tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
            .batch(batch_size)
            .map(lambda x, y: (tf.cast(x, tf.float32), y))
            .prefetch(tf.data.AUTOTUNE))


def _images_to_float(batch: dict) -> dict:
    """Raw inputs stay compact (uint8) in the pipeline and become float32 per batch."""
    return {k: tf.cast(v, tf.float32) if k == "image" else v for k, v in batch.items()}
