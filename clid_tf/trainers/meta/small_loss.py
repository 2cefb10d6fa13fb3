"""Small-loss meta sets for the `ce_sloss` / `mae_sloss` baselines.

After the warm-up, at the start of every epoch, the per-sample cross-entropy of the whole
training set (inference mode, noisy labels) is fitted with a 2-component Gaussian mixture
as in DivideMix (losses min-max normalised, `max_iter=10, reg_covar=5e-4, tol=1e-2`,
seeded). The posterior of the lower-mean component is each sample's clean probability; per
noisy class the `size // K` samples with the highest clean probability form this epoch's
meta set, whose meta objective (CE or MAE) reads their NOISY labels. The samples stay in
training.

Deliberate differences from the authors' eval_train() (ruofanhu/CLID-MU@5cd0608, utilities.py):
  * the GMM is seeded (`seed + epoch`) so a run is reproducible;
  * ties in clean probability (it saturates at 1.0 for the clearly clean samples) are
    broken by the lower loss, then by the lower index;
  * meta batches are drawn uniformly WITH replacement from the current meta set by a
    seeded stateless draw per batch, not by an epoch-wise shuffled loader;
  * selection always scores the whole training set (main_vri.py re-scores only the previous
    meta set).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from clid_tf.core.gmm import clean_probability, cross_entropy, normalize_losses
from clid_tf.data import pipelines as data
from clid_tf.evaluation import selection as selection_lib
from clid_tf.data.inputs import ArrayInputs

def per_class_size(size: int, num_classes: int) -> int:
    """size // K, which must be at least 1."""
    per_class = int(size) // int(num_classes)
    if per_class < 1:
        raise ValueError(f"meta_size={size} is smaller than the number of classes "
                         f"{num_classes}")
    return per_class


def select_small_loss(losses: np.ndarray, noisy_labels: np.ndarray, *, size: int,
                      num_classes: int, seed: int) -> np.ndarray:
    """The small-loss meta set: top size // K samples per noisy class by clean probability.

    Args:
      losses: float [N] per-sample CE with the noisy labels.
      noisy_labels: int [N] labels the classifier is trained with.
      size: meta-set size; each class contributes size // K (a class with fewer samples
        contributes all it has).
      num_classes: K.
      seed: GMM seed (see `clean_probability`).

    Returns:
      int64 [<= size // K * K] sorted indices into the N samples. Ties in clean probability
      go to the lower loss, then to the lower index.
    """
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    labels = np.asarray(noisy_labels).reshape(-1)
    if len(losses) != len(labels):
        raise ValueError(f"{len(losses)} losses but {len(labels)} labels")
    per_class = per_class_size(size, num_classes)
    prob = clean_probability(losses, seed=seed)
    order_loss = normalize_losses(losses)  # finite stand-in for the tie-break
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        rank = np.lexsort((members, order_loss[members], -prob[members]))
        chosen.append(members[rank[:per_class]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def precision(indices: np.ndarray, noisy_labels: np.ndarray,
              clean_labels: np.ndarray) -> float:
    """Fraction of the selected samples whose noisy label equals the clean one."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return float("nan")
    return float(np.mean(np.asarray(noisy_labels)[idx] == np.asarray(clean_labels)[idx]))


# ---------------------------------------------------------------- the meta stream
class DynamicMetaSet:
    """A meta set whose members change during training, read by a live tf.data stream.

    Holds the current meta indices (into the training split's source) in a `tf.Variable`
    int64 [M] (M = size // K * K, fixed) plus the number of valid entries (a selection may
    be smaller than M when a class is short; the tail is padding). The stream reads both
    variables inside the pipeline, so `assign` takes effect for every batch produced
    afterwards without rebuilding the dataset or its iterator. Batches already sitting in a
    downstream `prefetch` buffer were produced earlier and still carry the previous
    selection.
    """

    def __init__(self, source, labels: np.ndarray, indices: np.ndarray, *, size: int,
                 num_classes: int):
        """
        Args:
          source: the training split's `Inputs`.
          labels: int [len(source)] noisy training labels (the meta objective reads these).
          indices: int [<= M] initial meta indices into the source.
          size: meta-set size; M = size // K * K.
          num_classes: K.
        """
        if len(source) != len(labels):
            raise ValueError(f"{len(source)} inputs but {len(labels)} labels")
        self.source = source
        self.num_samples = len(source)
        self.capacity = per_class_size(size, num_classes) * int(num_classes)
        with tf.device("/CPU:0"):  # tf.data runs on the host
            self._labels = tf.constant(np.asarray(labels).astype(np.int32))
            self._indices = tf.Variable(tf.zeros([self.capacity], tf.int64),
                                        trainable=False, name="sloss_meta_indices")
            self._count = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                      name="sloss_meta_count")
        self.assign(indices)

    @property
    def indices(self) -> np.ndarray:
        """The current meta indices, int64 [m] (m <= M)."""
        return self._indices.numpy()[:int(self._count.numpy())]

    def assign(self, indices: np.ndarray) -> None:
        """Replaces the meta set by `indices` (int [1..M], into the source)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not 1 <= len(idx) <= self.capacity:
            raise ValueError(f"a meta set needs 1 to {self.capacity} indices, got {len(idx)}")
        if idx.min() < 0 or idx.max() >= self.num_samples:
            raise ValueError(f"meta indices must be in [0, {self.num_samples})")
        padded = np.resize(idx, self.capacity)  # padding repeats valid indices
        # Indices first, count second: a concurrent read sees valid indices either way.
        self._indices.assign(padded)
        self._count.assign(len(idx))

    def stream(self, batch_size: int, seed: int,
               augment: Callable[..., tf.Tensor] | None = None,
               first_step: int = 0) -> tf.data.Dataset:
        """Endless meta batches {'image': float32 [b, ...], 'label': int32 [b]}.

        Batch t draws b positions uniformly WITH replacement from the current meta set by
        `tf.random.stateless_uniform` seeded with (seed, t), so the sequence of positions
        is reproducible; which samples they map to depends on the selection at the time
        the batch is produced.

        Args:
          batch_size: b >= 1 (may exceed the meta-set size: draws are with replacement).
          seed: stream seed.
          augment: batch augmentation applied to the float images, or None; its draws
            are seeded by (seed, t) too.
          first_step: t of the first batch (a resumed run continues the sequence).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        draw = self._draw_fn(int(batch_size), int(seed))
        labels = self._labels
        steps = tf.data.Dataset.counter(first_step)
        if isinstance(self.source, ArrayInputs):
            # Draw and gather in ONE map, which reads the meta-set variables and so stays
            # sequential: a batch reflects the meta set of the moment it is produced
            # (nothing is read ahead but the downstream prefetch).
            table = self.source.table()

            def draw_batch(step):
                i = draw(step)
                return {"image": tf.cast(tf.gather(table, i), tf.float32),
                        "label": tf.gather(labels, i)}

            stream = steps.map(draw_batch)
        else:  # files decode in parallel map calls, which read a few batches ahead
            stream = self.source.read(steps.map(draw).unbatch(), batch_size=int(batch_size),
                                      drop_remainder=True).map(
                lambda i, x: {"image": tf.cast(x, tf.float32), "label": tf.gather(labels, i)})
        if augment is not None:
            steps = tf.data.Dataset.counter(first_step).map(
                lambda t: tf.stack([tf.constant(seed + 7919, tf.int64), t]))
            stream = tf.data.Dataset.zip(stream, steps).map(
                lambda b, s: {**b, "image": augment(b["image"], stateless_seed=s)})
        options = tf.data.Options()  # nothing may run ahead of the current selection
        options.experimental_optimization.inject_prefetch = False
        options.experimental_optimization.map_parallelization = False
        return stream.with_options(options)

    def _draw_fn(self, batch_size: int, seed: int) -> Callable[[tf.Tensor], tf.Tensor]:
        def draw(step: tf.Tensor) -> tf.Tensor:
            positions = tf.random.stateless_uniform(
                [batch_size], seed=tf.stack([tf.constant(seed, tf.int64), step]),
                minval=tf.constant(0, tf.int64), maxval=self._count.read_value(),
                dtype=tf.int64)
            return tf.gather(self._indices.read_value(), positions)
        return draw


# ---------------------------------------------------------------- the callback
class SelectionRecord(NamedTuple):
    """One re-selection: 1-based epoch, the chosen positions int64 [m] among the training
    samples, and their precision (fraction with a clean noisy label; None without clean
    labels)."""
    epoch: int
    indices: np.ndarray
    precision: float | None


class SmallLossReselection(keras.callbacks.Callback):
    """Re-selects the small-loss meta set at the start of every epoch after the warm-up.

    `on_epoch_begin` (epochs >= `first_epoch`, 0-based): per-sample CE of
    `self.model.backbone` (training=False, raw inputs, noisy labels) over the training
    samples (streamed in batches of `batch_size`), then `select_small_loss` with GMM seed
    `seed + epoch` (epoch 1-based), then `meta_set.assign`. Each selection is appended to
    `self.history`. With `clean_labels` its precision is logged as `sloss_meta_precision`
    at the end of the epoch, so put this callback before TensorBoard in `callbacks=[...]`.
    """

    def __init__(self, meta_set: DynamicMetaSet, train: data.Part, *, size: int,
                 num_classes: int, seed: int, batch_size: int = 500,
                 clean_labels: np.ndarray | None = None, first_epoch: int = 0):
        """
        Args:
          meta_set: the live meta set to re-select.
          train: the training samples with their noisy labels (aligned with its indices).
          clean_labels: int [n] true labels of those samples, for the precision monitor.
          first_epoch: the first epoch (0-based) that re-selects: the warm-up's end.
        """
        super().__init__()
        if train.labels is None or len(train.labels) != len(train):
            raise ValueError("the training part needs one noisy label per sample")
        if clean_labels is not None and len(clean_labels) != len(train):
            raise ValueError(f"{len(clean_labels)} clean labels for {len(train)} samples")
        self.meta_set = meta_set
        self.train = train
        self.noisy_labels = np.asarray(train.labels).astype(np.int64)
        self.clean_labels = None if clean_labels is None else np.asarray(clean_labels)
        self.size = int(size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.first_epoch = int(first_epoch)
        self.history: list[SelectionRecord] = []
        self._forward: selection_lib.Forward | None = None

    def on_train_begin(self, logs=None):
        backbone = getattr(self.model, "backbone", None)
        if backbone is None:
            raise ValueError("SmallLossReselection needs a model with a `.backbone`")
        self._forward = selection_lib.inference_function(backbone)

    def training_losses(self) -> np.ndarray:
        """Per-sample CE float64 [n] of the current backbone with the noisy labels."""
        logits = selection_lib.predict_logits(self._forward, self.train,
                                              batch_size=self.batch_size)
        return cross_entropy(logits, self.noisy_labels)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.first_epoch:
            return
        number = int(epoch) + 1
        positions = select_small_loss(self.training_losses(), self.noisy_labels,
                                      size=self.size, num_classes=self.num_classes,
                                      seed=self.seed + number)
        self.meta_set.assign(self.train.ids()[positions])
        known = self.clean_labels is not None
        self.history.append(SelectionRecord(
            number, positions,
            precision(positions, self.noisy_labels, self.clean_labels) if known else None))

    def on_epoch_end(self, epoch, logs=None):
        if (logs is not None and epoch >= self.first_epoch and self.history
                and self.history[-1].precision is not None):
            logs["sloss_meta_precision"] = self.history[-1].precision
