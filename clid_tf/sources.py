"""Where a split's raw inputs live, read by index inside tf.data.

A `Source` holds the inputs of one split (train, val or test) and reads any of them by
index, so that every pipeline (training batches, the meta set, label-free selection, the
small-loss reselection, the audit) is a stream of indices mapped to inputs, and nothing
needs the whole split in one array:

  ArraySource  inputs already in memory (digits, CIFAR, an npz): a gather per batch.
  FileSource   image files on disk (a class-folder tree, a "path label" list file): each
               file is read, decoded and resized in parallel tf.data map calls
               (clid_tf.image_files).

Labels are not part of a source: they are small int arrays kept beside it
(`clid_tf.datasets.Split`), so that noise injection and meta-set splits stay numpy.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Source(Protocol):
    """Raw inputs of one split, addressed by index 0 .. len - 1.

    Attributes:
      element_shape: shape of one input, (H, W, C) for images or (D,) for feature vectors.
      dtype: 'uint8' for images (0..255) or 'float32' for feature vectors.
    """

    element_shape: tuple[int, ...]
    dtype: str

    def __len__(self) -> int:
        ...

    def names(self) -> np.ndarray | None:
        """str [N] identifiers of the inputs (file paths), or None for arrays."""

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        """Maps a tf.data.Dataset of int64 scalar indices to batches (ids, inputs).

        Args:
          indices: tf.data.Dataset of int64 scalars in [0, len).
          batch_size: inputs per batch.
          drop_remainder: drop a last, smaller batch (static shapes for XLA).

        Returns:
          tf.data.Dataset of (int64 [b] indices, inputs [b, *element_shape] of `dtype`),
          in the order of `indices`.
        """


class ArraySource:
    """Inputs held in one numpy array [N, *element_shape] (uint8 images or float32 vectors)."""

    def __init__(self, array: np.ndarray):
        array = np.asarray(array)
        if array.dtype not in (np.uint8, np.float32):
            raise ValueError(f"an ArraySource holds uint8 or float32 inputs, got {array.dtype}")
        self.array = array
        self.element_shape = tuple(int(d) for d in array.shape[1:])
        self.dtype = array.dtype.name
        self._table = None  # tf.constant, made on first read (TensorFlow imported late)

    def __len__(self) -> int:
        return len(self.array)

    def names(self) -> None:
        return None

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        if self._table is None:
            with tf.device("/CPU:0"):  # tf.data runs on the host
                self._table = tf.constant(self.array)
        table = self._table
        return indices.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda ids: (ids, tf.gather(table, ids)))


def read_numpy(source: Source, indices: Sequence[int], *, batch_size: int = 500) -> np.ndarray:
    """The inputs at `indices` as one numpy array [len(indices), *element_shape].

    For small subsets only (a TensorBoard sample, a test fixture): it holds them all.
    """
    if isinstance(source, ArraySource):
        return source.array[np.asarray(indices, np.int64)]
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    ids = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
    parts = [x for _, x in source.read(ids, batch_size=batch_size).as_numpy_iterator()]
    if not parts:
        return np.zeros((0, *source.element_shape), source.dtype)
    return np.concatenate(parts)
