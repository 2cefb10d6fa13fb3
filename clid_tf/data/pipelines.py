"""tf.data pipelines over a split's `Inputs`: training batches, meta batches, and
batches in order for inference.

Every pipeline is a stream of indices into the split's inputs, mapped to them by `Inputs.read`
(a gather for arrays, parallel file decoding for image files), so nothing holds a split in
one array. Per-sample fields (labels, the is-noisy monitor) are small int arrays kept as
tables and gathered by the same indices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from clid_tf.data.inputs import ArrayInputs, Inputs, as_inputs, input_array, to_model

def one_pass_batches(source: ArrayInputs, indices: np.ndarray, *, batch_size: int,
                     seed: int, first_epoch: int = 0,
                     fields: Mapping[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """Endless batches {'image', **fields} of in-memory inputs in epochs that are one pass
    each, as Keras' fit(x, y) makes them: epoch e is a stateless shuffle of `indices`
    seeded by (seed, e), cut into ceil(n / b) batches, the last one smaller when b does not
    divide n (one batch of all n when b > n). The batch dimension is not static."""
    indices = np.asarray(indices, np.int64)
    order_of, n = tf.constant(indices), len(indices)
    inputs = source.table()  # made here, eagerly, not inside the traced epoch function

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(tf.gather(order_of, order)).batch(
            min(batch_size, n))

    batches = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).map(
        lambda ids: (ids, tf.nest.map_structure(lambda t: tf.gather(t, ids), inputs)))
    return batches.map(_with_fields(fields))


def epoch_batches(source: Inputs, indices: np.ndarray, *, batch_size: int,
                  seed: int, steps_per_epoch: int, first_epoch: int = 0,
                  fields: Mapping[str, np.ndarray] | None = None,
                  augment: Callable[..., tf.Tensor] | None = None,
                  indices_of_epoch: Callable[[int], np.ndarray] | None = None
                  ) -> tf.data.Dataset:
    """Endless batches {'image': float32 [b, ...], **fields}, `steps_per_epoch` per epoch.

    Epoch e is a function of (seed, e) alone: its order is a stateless shuffle of
    `indices` (or of indices_of_epoch(e)) seeded by e (as many passes as the epoch needs;
    no batch holds a sample twice, `_whole_batches`), and its augmentation draws are seeded
    by (e, step), so a run resumed at epoch e sees the same batches as an uninterrupted
    one. Batches have static shapes (drop_remainder) for XLA.

    Args:
      source: the split's inputs.
      indices: int [n] source indices the batches draw from (e.g. the training samples,
        or the meta set).
      batch_size: b <= n.
      seed: stream seed.
      steps_per_epoch: batches per epoch.
      first_epoch: epoch the stream starts at (0-based).
      fields: name -> array [len(source)] of per-sample values (e.g. 'label', 'is_noisy'),
        gathered by source index into each batch.
      augment: batch augmentation (clid_tf.data.augment.build), or None.
      indices_of_epoch: for a set drawn anew every epoch (a re-drawn meta set, a re-sampled
        training subset): epoch -> its int [n] source indices, n = len(indices), a
        function of the epoch alone (called in the input pipeline, once per epoch).
    """
    indices = np.asarray(indices, np.int64)
    n = len(indices)
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the {n} samples it draws from")
    table = tf.constant(indices)
    passes = -(-steps_per_epoch * batch_size // n)  # permutations needed for one epoch

    def members(epoch):
        """int64 [n]: the source indices epoch `epoch` draws from."""
        if indices_of_epoch is None:
            return table
        drawn = tf.numpy_function(lambda e: np.asarray(indices_of_epoch(int(e)), np.int64),
                                  [epoch], tf.int64, stateful=False)
        return tf.ensure_shape(drawn, [n])

    def epoch_ids(epoch):
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + epoch
        drawn = members(epoch)
        shuffles = tf.data.Dataset.range(passes).map(
            lambda p: tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, p])))
        return (shuffles.scan(_no_carry(batch_size), _whole_batches(n, batch_size))
                .map(lambda positions: tf.gather(drawn, positions))
                .unbatch().take(steps_per_epoch * batch_size))

    ids = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_ids)
    batches = source.read(ids, batch_size=batch_size, drop_remainder=True)
    batches = batches.map(_with_fields(fields))
    if augment is None:
        return batches
    steps = tf.data.Dataset.counter(first_epoch * steps_per_epoch).map(
        lambda t: tf.stack([tf.constant(seed, tf.int64) * 1_000_003 + t // steps_per_epoch,
                            t % steps_per_epoch]))
    return tf.data.Dataset.zip(batches, steps).map(
        lambda b, s: {**b, "image": augment(b["image"], stateless_seed=s)})


def _no_carry(batch_size: int):
    """The scan state of `_whole_batches` before the first pass: no position carried."""
    return tf.zeros([batch_size], tf.int64), tf.constant(0, tf.int32)


def _whole_batches(n: int, batch_size: int):
    """scan over the passes of an epoch (each a permutation of the positions 0..n-1): emits
    the positions that fill whole batches, with no position twice in one batch.

    The positions left over by a pass (its last n mod b, fewer than a batch) open the next
    pass's first batch; that pass's permutation puts those positions at its end, so the
    first batch holds b different positions and every position still comes once per pass.
    With n a multiple of b nothing is carried and the passes are the permutations
    themselves.
    """
    def step(state, permutation):
        buffer, count = state
        carried = buffer[:count]
        moved = tf.scatter_nd(carried[:, None], tf.ones_like(carried, tf.bool), [n])
        moved = tf.gather(moved, permutation)
        order = tf.concat([carried, permutation[~moved], permutation[moved]], axis=0)
        whole = (tf.cast(count, tf.int64) + n) // batch_size * batch_size
        rest = order[whole:]
        rest_count = tf.cast(tf.shape(rest)[0], tf.int32)
        buffer = tf.concat([rest, tf.zeros([batch_size - rest_count], tf.int64)], axis=0)
        return (tf.ensure_shape(buffer, [batch_size]), rest_count), order[:whole]
    return step


def training_stream(train: tf.data.Dataset, meta: tf.data.Dataset | None = None, *,
                    live_meta: bool = False) -> tf.data.Dataset:
    """{'train': batch} or {'train': batch, 'meta': meta batch} elements, prefetched: the
    input of `MetaReweightModel.fit`.

    live_meta: the meta stream reads a meta set that changes between epochs
    (`sloss.DynamicMetaSet`); then only the training batches are prefetched, so every meta
    batch is drawn when its step asks for it and follows the current selection.
    """
    if meta is None:
        return train.map(lambda t: {"train": t}).prefetch(tf.data.AUTOTUNE)
    if live_meta:
        return tf.data.Dataset.zip(train.prefetch(tf.data.AUTOTUNE), meta).map(
            lambda t, m: {"train": t, "meta": m})
    return (tf.data.Dataset.zip(train, meta)
            .map(lambda t, m: {"train": t, "meta": m}).prefetch(tf.data.AUTOTUNE))


def ordered_batches(source: Inputs, indices: np.ndarray | None = None, *,
                    batch_size: int) -> tf.data.Dataset:
    """(source indices int64 [b], inputs [b, ...] as the model takes them, `to_model`) in
    the order of `indices` (all samples when None); the last batch may be smaller. For
    inference passes."""
    indices = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(
        indices, np.int64)
    ids = tf.data.Dataset.from_tensor_slices(indices)
    return (source.read(ids, batch_size=batch_size)
            .map(lambda i, x: (i, to_model(x)))
            .prefetch(tf.data.AUTOTUNE))


def _with_fields(fields: Mapping[str, np.ndarray] | None):
    """(ids, inputs) -> {'image': float32 inputs, **fields gathered at ids}."""
    tables = {key: tf.constant(np.asarray(value)) for key, value in (fields or {}).items()}

    def to_batch(ids, inputs):
        batch = {"image": to_model(inputs)}
        batch.update({key: tf.gather(table, ids) for key, table in tables.items()})
        return batch

    return to_batch


@dataclasses.dataclass(frozen=True)
class Part:
    """Some samples of a split: its inputs, which of their indices, and their labels.

    Attributes:
      inputs: the split's `Inputs`.
      indices: int64 [n] indices into them, or None for every sample in order.
      labels: int [n] labels of those samples (aligned with `indices`), or None.
    """
    inputs: Inputs
    indices: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs) if self.indices is None else len(self.indices)

    def ids(self) -> np.ndarray:
        """int64 [n] source indices of the part."""
        return (np.arange(len(self.inputs), dtype=np.int64) if self.indices is None
                else np.asarray(self.indices, np.int64))


def as_part(value) -> Part:
    """A `Part` from a Part, an `Inputs`, an array of inputs, or an (inputs, labels) pair."""
    if isinstance(value, Part):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        inputs, labels = value
        return dataclasses.replace(as_part(inputs), labels=np.asarray(labels))
    if hasattr(value, "read") and hasattr(value, "element_shape"):
        return Part(value)
    return Part(as_inputs(value))


def as_input_array(x):
    """A user's inputs as the pipelines hold them (`inputs.input_array`: uint8 pixels,
    float32, integer ids, text), one array or a dict / tuple of arrays, one per input (a
    list of them as a tuple, which Keras passes to a model of list inputs alike)."""
    if isinstance(x, dict):
        return {key: input_array(value, f"x[{key!r}]") for key, value in x.items()}
    if isinstance(x, (list, tuple)):  # a tuple: tf.data's structures have no lists
        return tuple(input_array(value, f"x[{i}]") for i, value in enumerate(x))
    return input_array(x)


def image_array(x, trainer: str) -> np.ndarray:
    """Images for the trainers that augment or mix them (DivideMix, FixMatch): one numeric
    array, uint8 kept, anything else float32; ValueError (one line) for text, several
    inputs or another structure."""
    if isinstance(x, (dict, list, tuple)):
        raise ValueError(f"{trainer} augments and mixes its inputs, so it takes one image "
                         "array (uint8 or float); a model with several inputs trains with "
                         "MetaReweightModel")
    x = np.asarray(x)
    if x.dtype.kind not in "uifb":
        what = "text" if x.dtype.kind in "OSU" else f"{x.dtype} data"
        raise ValueError(f"{trainer} augments and mixes its inputs, so it takes numeric "
                         f"images, not {what} (text trains with MetaReweightModel)")
    return x if x.dtype == np.uint8 else x.astype(np.float32)
