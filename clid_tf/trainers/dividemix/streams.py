"""DivideMix's data per epoch: the GMM clean probabilities (the co-divide's input) and
the streams of one epoch, each network's phase after the other.

An epoch is a finite tf.data stream built for that epoch alone, from numpy indices, so
its length may change with the division; `DivideMixModel.fit` runs one Keras epoch per
DivideMix epoch on it. Every draw is seeded by (seed, epoch, step): a run resumed at an
epoch boundary, whose networks are restored from the checkpoint, computes the same
division and the same batches.

  warm-up epoch    net 1 then net 2, each ceil(N / B) batches {'train': {'image',
                   'label'}} of all training samples (one augmented view)
  DivideMix epoch  net k trains on the part the OTHER net's GMM made: ceil(|L_k| / B)
                   batches {'labeled': {'image', 'image2', 'label', 'prob'},
                   'unlabeled': {'image', 'image2'}, 'meta': {'image'}}; the unlabeled
                   part cycles; 'meta' (only with meta-nets) comes from net k's own meta set
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from clid_tf.data import augment as augment_lib
from clid_tf.data import meta_sets as meta_sets_lib
from clid_tf.data import pipelines as data
from clid_tf.data import user_data
from clid_tf.data.inputs import ArrayInputs
from clid_tf.trainers.dividemix import mixmatch as dividemix
from clid_tf.evaluation import selection as selection_lib
from clid_tf.core import gmm

# Stream codes: each stream of an epoch has its own seed, 10 * seed + code.
_WARMUP, _LABELED, _UNLABELED, _META = 1, 3, 5, 7


class Phase(NamedTuple):
    """One network's share of an epoch."""
    kind: str       # 'warmup' or 'dividemix'
    net: int        # 0 or 1
    steps: int


class EpochPlan(NamedTuple):
    """An epoch: its phases in order and the stream that feeds them back to back."""
    phases: list[Phase]
    stream: tf.data.Dataset
    stats: dict[str, float]   # per-network division statistics (empty in warm-up)

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)


class Streams:
    """The training data of a DivideMix run and the epochs made from it.

    Args:
      train: the training samples (`data.Part` with their noisy labels, aligned).
      meta_sets: one label-free meta set per network (`data.Part`s), or None without
        meta-nets.
      batch_size: B, rows per part (labeled and unlabeled each; the warm-up batch).
      meta_batch_size: rows of a meta batch.
      seed: stream seed.
      augment: training augmentation (`clid_tf.data.augment.build`) or None.
      meta_augment: augmentation of the meta batches or None.
      max_steps: > 0 caps each phase at this many steps (quick runs).
      is_clean: bool [n] noisy label == true label of the training samples (monitoring
        the division only), or None.
      eval_batch_size: batch of the inference passes of the co-divide.
      average_epochs: the GMM sees the mean of this many epochs' normalised losses
        (DivideMix averages 5 at 90% noise, else 1).
    """

    def __init__(self, train: data.Part, *, meta_sets: Sequence[data.Part] | None,
                 batch_size: int, meta_batch_size: int = 100, seed: int = 0,
                 augment: Callable | None = None, meta_augment: Callable | None = None,
                 max_steps: int = 0, is_clean: np.ndarray | None = None,
                 eval_batch_size: int = 500, average_epochs: int = 1):
        if train.labels is None or len(train.labels) != len(train):
            raise ValueError("the training part needs one noisy label per sample")
        self.train = train
        self.ids = train.ids()
        self.labels = np.asarray(train.labels).astype(np.int64)
        self.meta_sets = None if meta_sets is None else list(meta_sets)
        self.batch_size = int(batch_size)
        self.meta_batch_size = int(meta_batch_size)
        self.seed = int(seed)
        self.augment = augment
        self.meta_augment = meta_augment
        self.max_steps = int(max_steps)
        self.is_clean = None if is_clean is None else np.asarray(is_clean, bool)
        self.eval_batch_size = int(eval_batch_size)
        self.average_epochs = int(average_epochs)
        # The last `average_epochs` normalised losses per network, newest last, and how
        # many are filled: variables, so that a resumed run's checkpoint restores them.
        self.history = tf.Variable(tf.zeros([2, self.average_epochs, len(self.ids)],
                                            tf.float64), trainable=False, name="losses")
        self.filled = tf.Variable(0, trainable=False, name="filled")
        self._forwards: dict[int, selection_lib.Forward] = {}
        by_source = np.zeros(len(train.inputs), np.int32)
        by_source[self.ids] = self.labels
        self._label_table = by_source

    # ------------------------------------------------------------ the co-divide
    def clean_probabilities(self, backbones: Sequence[keras.Model], epoch: int
                            ) -> list[np.ndarray]:
        """Each network's GMM clean probability float64 [n] of every training sample:
        inference-mode CE with the noisy labels, min-max normalised (averaged over the
        last `average_epochs` epochs), `gmm.clean_probability` seeded seed + epoch + 1."""
        history = self.history.numpy()
        filled = min(int(self.filled.numpy()) + 1, self.average_epochs)
        for k, backbone in enumerate(backbones):
            if id(backbone) not in self._forwards:
                self._forwards[id(backbone)] = selection_lib.inference_function(backbone)
            logits = selection_lib.predict_logits(self._forwards[id(backbone)], self.train,
                                                  batch_size=self.eval_batch_size)
            losses = gmm.normalize_losses(gmm.cross_entropy(logits, self.labels))
            history[k] = np.concatenate([history[k, 1:], losses[None]])
        self.history.assign(history)
        self.filled.assign(filled)
        return [gmm.clean_probability(history[k, -filled:].mean(axis=0),
                                        seed=self.seed + epoch + 1) for k in (0, 1)]

    def checkpoint_parts(self) -> dict:
        """The loss history, for the run's checkpoint (exact resume with averaging)."""
        return {"codivide_losses": self.history, "codivide_filled": self.filled}

    # ------------------------------------------------------------ epochs
    def steps(self, size: int) -> int:
        """Batches of a phase over `size` samples: ceil(size / B), at least 1, capped."""
        steps = max(1, math.ceil(size / self.batch_size))
        return min(steps, self.max_steps) if self.max_steps > 0 else steps

    def warmup_epoch(self, epoch: int) -> EpochPlan:
        """CE warm-up: net 1, then net 2, each over all training samples."""
        steps = self.steps(len(self.ids))
        phases = [Phase("warmup", k, steps) for k in (0, 1)]
        streams = [self._batches(self.ids, _WARMUP + k, epoch, steps, views=1).map(
            lambda b: {"train": b}) for k in (0, 1)]
        # no division yet: its statistics are NaN (every epoch's logs have every column)
        empty = dividemix.PartOf(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        stats = {f"net{k + 1}_{name}": float("nan") for k in (0, 1)
                 for name in dividemix.division_stats(empty, self.is_clean)}
        return EpochPlan(phases, streams[0].concatenate(streams[1]), stats)

    def dividemix_epoch(self, epoch: int, parts: Sequence[dividemix.PartOf]) -> EpochPlan:
        """Net k trains on parts[k] (made by the other network), net 1 first."""
        phases, streams, stats = [], [], {}
        for k, part in enumerate(parts):
            labeled = _at_least(part.labeled, self.batch_size, len(self.ids))
            unlabeled = _at_least(part.unlabeled, self.batch_size, len(self.ids))
            steps = self.steps(len(part.labeled))
            phases.append(Phase("dividemix", k, steps))
            prob = np.zeros(len(self.train.inputs), np.float32)
            prob[self.ids] = part.clean_prob
            elements = {
                "labeled": self._batches(self.ids[labeled], _LABELED + k, epoch, steps,
                                         views=2, prob=prob),
                "unlabeled": self._batches(self.ids[unlabeled], _UNLABELED + k, epoch,
                                           steps, views=2, labels=False),
            }
            if self.meta_sets is not None:
                meta = self.meta_sets[k]
                elements["meta"] = data.epoch_batches(
                    meta.inputs, meta.ids(), batch_size=min(self.meta_batch_size, len(meta)),
                    seed=10 * self.seed + _META + k, steps_per_epoch=steps,
                    first_epoch=epoch, augment=self.meta_augment).take(steps)
            streams.append(tf.data.Dataset.zip(elements))
            stats.update({f"net{k + 1}_{name}": value for name, value in
                          dividemix.division_stats(part, self.is_clean).items()})
        return EpochPlan(phases, streams[0].concatenate(streams[1]), stats)

    def _batches(self, ids: np.ndarray, code: int, epoch: int, steps: int, *, views: int,
                 labels: bool = True, prob: np.ndarray | None = None) -> tf.data.Dataset:
        """`steps` batches of epoch `epoch` over source ids, `views` augmented views
        ('image', 'image2'), seeded by (10 * seed + code, epoch, step, view)."""
        fields = {"label": self._label_table} if labels else {}
        if prob is not None:
            fields["prob"] = prob
        seed = 10 * self.seed + code
        batches = data.epoch_batches(self.train.inputs, ids, batch_size=self.batch_size,
                                     seed=seed, steps_per_epoch=steps, first_epoch=epoch,
                                     fields=fields).take(steps)
        augment = self.augment
        if augment is None:
            return batches.map(lambda b: {**b, **({"image2": b["image"]} if views == 2
                                                   else {})})
        base = tf.constant(seed, tf.int64) * 1_000_003 + epoch

        def augmented(step, batch):
            images = batch.pop("image")
            for v, key in enumerate(("image", "image2")[:views]):
                batch[key] = augment(images, stateless_seed=tf.stack([base, views * step + v]))
            return batch

        return batches.enumerate().map(augmented)


class UserStreams(NamedTuple):
    """A user's fit arguments as DivideMix's input."""
    streams: "Streams"
    validation_data: object
    profile: user_data.InputProfile


def from_user_data(x, y=None, *, num_classes: int, with_meta: bool, batch_size: int,
                   meta_size: int, meta_batch_size: int, seed: int, augment: str,
                   validation_split: float = 0.0, validation_data=None) -> UserStreams:
    """`Streams` from arrays (x [N, ...], labels y) or a batched Dataset (read into
    memory: the co-divide scores every training sample every epoch).

    Labels as `user_data.check_labels` takes them. With meta-nets, each network gets its
    own label-free meta set: `meta_size` random training samples (seeds `seed` and `seed +
    meta_sets.SECOND_SET_SEED_OFFSET`). `augment` ('none', 'weak', 'strong', 'randaugment') is the
    training augmentation, in the inputs' own pixel range ([0, 1] or 0..255); the meta
    batches take the weak view whenever training augments.
    """
    x, labels, _, validation = user_data.in_memory(
        x, y, num_classes=num_classes,
        validation=user_data.checked_validation_data(validation_data, num_classes),
        validation_split=validation_split, with_weights=False)
    x = data.image_array(x, "DivideMixModel")
    profile = user_data.profile_of_array(x)
    if augment != "none" and not profile.is_image:
        raise ValueError(f"augment={augment!r} needs images [N, H, W, C]; these inputs are "
                         f"{profile.shape}: use augment='none'")

    def augmentation(kind: str):
        if kind == "none":
            return None
        return augment_lib.build(kind, image_shape=profile.shape, seed=seed,
                                 pixel_scale=profile.pixel_scale,
                                 pad=min(augment_lib.CROP_PAD, min(profile.shape[:2]) - 1))

    source = ArrayInputs(x)
    meta = None
    if with_meta:
        size = min(meta_size, len(x))
        meta = [data.Part(source, meta_sets_lib.random_subset(len(x), size=size, seed=s))
                for s in (seed, seed + meta_sets_lib.SECOND_SET_SEED_OFFSET)]
    streams = Streams(data.Part(source, None, labels), meta_sets=meta, batch_size=batch_size,
                      meta_batch_size=meta_batch_size, seed=seed,
                      augment=augmentation(augment),
                      meta_augment=augmentation("none" if augment == "none" else "weak"))
    return UserStreams(streams, validation, profile)


def _at_least(positions: np.ndarray, size: int, total: int) -> np.ndarray:
    """Positions to draw batches of `size` from: all training samples when empty, repeated
    when fewer than `size` (DivideMix's loaders would give smaller batches or none)."""
    if len(positions) == 0:
        positions = np.arange(total, dtype=np.int64)
    return positions if len(positions) >= size else np.resize(positions, size)
