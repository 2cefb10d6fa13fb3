"""A run's data after noise injection and the held-out and meta splits.

numpy only, on labels and indices: every check of the user's data and sizes happens here,
before TensorFlow is imported, so bad input is reported as one line. The inputs themselves
stay in their `Inputs`; a split is a set of indices into the training split.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from clid_tf.data import datasets
from clid_tf.data import meta_sets
from clid_tf.data import noise as noise_lib
from clid_tf.data import sources

LABEL_FREE = ("clid", "entropy")
SMALL_LOSS = ("ce_sloss", "mae_sloss")
META_SOURCES = ("train", "val")
_SUBSET_KEY = 23  # seed-sequence key of the training subset's draws

# The indices of epoch e (0-based) of a set that changes every epoch; epoch 0 gives the set
# the Setup names (train_indices, meta_indices).
EpochIndices = Callable[[int], np.ndarray]


class Setup(NamedTuple):
    """Data of one run after noise injection and the splits.

    Attributes:
      dataset: the loaded `datasets.Dataset`.
      noisy_labels: int64 [N] labels the classifier sees, for every sample of the training
        split (the given labels, or labels with injected synthetic noise).
      train_indices: int64 [N_train] samples trained on.
      meta_indices: int64 [M] meta-set samples, or None for method 'ce'.
      meta_labels: int64 [M] labels the meta objective reads, or None (label-free).
      selection_indices: int64 [M] unlabeled samples whose CLID ranks epochs for label-free
        checkpoint selection: the meta set, or for 'ce' a random subset of the same size.
      val_indices: int64 [V] samples held out of training (`val_split`), scored with their
        noisy labels; None when there is no held-out part.
      meta_split: the split whose source meta_indices and selection_indices index: 'train',
        or 'val' (a meta set of validation images, their labels never read).
      train_of_epoch: when the training samples are re-drawn every epoch (a re-sampled
        class-balanced subset), epoch -> its int64 [N_train] indices (epoch 0:
        train_indices); None when train_indices serve every epoch.
      meta_of_epoch: the same for a meta set re-drawn every epoch (epoch 0: meta_indices);
        label-free selection keeps scoring selection_indices, so that its CLID values
        compare across epochs.
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_indices: np.ndarray | None
    meta_labels: np.ndarray | None
    selection_indices: np.ndarray
    val_indices: np.ndarray | None = None
    meta_split: str = "train"
    train_of_epoch: EpochIndices | None = None
    meta_of_epoch: EpochIndices | None = None

    def meta_inputs(self):
        """The `Inputs` that meta_indices and selection_indices index."""
        split = self.dataset.val if self.meta_split == "val" else self.dataset.train
        return split.inputs


def prepare(dataset: datasets.Dataset, *, noise: str, noise_rate: float, method: str,
            meta_size: int, batch_size: int, meta_batch_size: int, seed: int,
            val_split: float = 0.0, imbalance_gamma: float = 1.0,
            meta_source: str = "train", redraw_meta: bool = False, train_subset: int = 0,
            resample_subset: bool = False) -> Setup:
    """Injects noise, holds out `val_split`, splits the meta set, draws the training
    subset and checks the sizes.

    Args:
      dataset: the loaded data.
      noise: a `noise.KINDS` name ('none' keeps the labels) or a CIFAR-N label-set name
        (already loaded as the labels: kept).
      noise_rate: rate of the synthetic noise.
      method: the training method (which meta set it needs).
      meta_size, batch_size, meta_batch_size: sizes, checked against the data.
      seed: seed of the noise, the held-out split and the meta set.
      val_split: fraction of the training split held out for validation (noisy labels).
      imbalance_gamma: > 1 keeps a long-tailed subset (by true label).
      meta_source: 'train' (the meta set of `method`) or 'val': `meta_size` random images
        of the validation split, for label-free methods (Clothing1M's clean_val images;
        the labels are never read) and for 'ce' (its label-free selection set).
      redraw_meta: a new random meta set of the same size every epoch (label-free methods;
        the authors' Animal-10N script's: ruofanhu/CLID-MU@5cd0608, sota/Train_animal_vri.py:489),
        `Setup.meta_of_epoch`.
      train_subset: > 0 trains on a class-balanced subset of the training samples: at most
        train_subset // K per noisy class (`balanced_subset`, the authors' Clothing1M
        192 000: ruofanhu/CLID-MU@5cd0608, sota/dataloader_clothing1M.py:
        clothing_dataset); 0 trains on all.
      resample_subset: draw that subset anew every epoch (`Setup.train_of_epoch`) instead
        of once.

    Raises:
      ValueError or DataError with a one-line message on bad input.
    """
    if meta_source not in META_SOURCES:
        raise ValueError(f"unknown meta source {meta_source!r}; choose from {META_SOURCES}")
    if meta_source == "val" and method not in (*LABEL_FREE, "ce"):
        raise ValueError(f"meta source 'val' draws a meta set without labels; method "
                         f"{method} needs one with labels (use {' or '.join(LABEL_FREE)})")
    if redraw_meta and method not in LABEL_FREE:
        raise ValueError(f"a meta set re-drawn each epoch is label-free; method {method} "
                         f"{'has no meta set' if method == 'ce' else 'needs labels'} (use "
                         f"{' or '.join(LABEL_FREE)})")
    if resample_subset and not train_subset:
        raise ValueError("resample_subset needs a train_subset size to re-draw")
    setup = _split(dataset, noise=noise, noise_rate=noise_rate, method=method,
                   meta_size=meta_size if meta_source == "train" else 1,  # val: replaced
                   seed=seed, val_split=val_split, imbalance_gamma=imbalance_gamma)
    if meta_source == "val":
        setup = _val_meta_set(setup, meta_size=meta_size, seed=seed)
    if redraw_meta:
        pool = (np.arange(len(dataset.val.labels), dtype=np.int64) if meta_source == "val"
                else setup.train_indices)
        setup = setup._replace(meta_of_epoch=redrawn_meta(pool, setup.meta_indices, seed))
    if train_subset:
        setup = _with_subset(setup, size=train_subset, seed=seed, resample=resample_subset)
    if batch_size > len(setup.train_indices):
        raise ValueError(f"batch_size={batch_size} exceeds the "
                         f"{len(setup.train_indices)} training samples")
    if meta_batch_size > len(setup.selection_indices):
        raise ValueError(f"meta_batch_size={meta_batch_size} exceeds the meta set "
                         f"({len(setup.selection_indices)} samples)")
    return setup


def noisy_training_labels(dataset: datasets.Dataset, *, noise: str, noise_rate: float,
                          seed: int) -> np.ndarray:
    """int64 [N]: the training labels with `noise` injected ('none', CIFAR-N: as given)."""
    train = dataset.train
    if noise == "none" or sources.is_human_label(noise):
        return train.labels.astype(np.int64)
    images = getattr(train.inputs, "array", None)
    if noise in noise_lib.IMAGE_KINDS and images is None:
        raise ValueError(f"{noise} noise needs the training images in memory (arrays); "
                         "file data cannot use it")
    return noise_lib.corrupt(train.labels, kind=noise, rate=noise_rate,
                             num_classes=dataset.num_classes, seed=seed, images=images)


def _split(dataset, *, noise, noise_rate, method, meta_size, seed, val_split,
           imbalance_gamma) -> Setup:
    noisy = noisy_training_labels(dataset, noise=noise, noise_rate=noise_rate, seed=seed)
    injected = noise != "none" and not sources.is_human_label(noise)
    if injected and dataset.train.clean_labels is None:
        # Synthetic noise asked for on a user's labels: relative to it, the given labels
        # are the truth, so the noise report, the clean/noisy weight monitors and the
        # audit's precision and recall are known (monitoring only, as for benchmarks).
        dataset = dataset._replace(train=dataset.train._replace(
            clean_labels=dataset.train.labels.astype(np.int64)))
    k = dataset.num_classes
    # Long-tailed subset, selected by true label after noise injection
    # (ruofanhu/CLID-MU@5cd0608, dataloader.py: get_imbalanced_dataset()).
    clean = dataset.train.clean_labels
    true = clean if clean is not None else dataset.train.labels
    pool = (noise_lib.imbalance_indices(true, gamma=imbalance_gamma, seed=seed, num_classes=k)
            if imbalance_gamma > 1.0 else np.arange(len(noisy), dtype=np.int64))
    pool, val = hold_out(pool, val_split, seed, has_val=dataset.val is not None)
    if method in ("ce", *LABEL_FREE):
        meta = pool[meta_sets.random_subset(len(pool), size=meta_size, seed=seed)]
        return Setup(dataset, noisy, pool, None if method == "ce" else meta, None, meta, val)
    if method in SMALL_LOSS:  # re-selected each epoch (clid_tf.trainers.meta.small_loss); samples stay in training
        meta, _ = meta_sets.balanced_split(noisy[pool], size=meta_size, num_classes=k,
                                           seed=seed)
        meta = pool[meta]
        return Setup(dataset, noisy, pool, meta, noisy[meta].astype(np.int64), meta, val)
    if method == "ce_clean" and clean is None:
        raise ValueError("method ce_clean needs clean training labels; this dataset has "
                         "none (an npz can give y_train_clean)")
    meta, rest = meta_sets.balanced_split(noisy[pool], size=meta_size, num_classes=k,
                                          seed=seed)
    meta, rest = pool[meta], pool[rest]
    source = clean if method == "ce_clean" else noisy
    return Setup(dataset, noisy, rest, meta, source[meta].astype(np.int64), meta, val)


def _val_meta_set(setup: Setup, *, meta_size: int, seed: int) -> Setup:
    """The meta set (and the selection set) as `meta_size` random validation images."""
    val = setup.dataset.val
    if val is None:
        raise ValueError("meta source 'val' needs a validation split (--val_list for list: "
                         "data, a val/ folder for folder: data)")
    if meta_size > len(val.labels):
        raise ValueError(f"meta_size={meta_size} exceeds the {len(val.labels)} validation "
                         "images the meta set is drawn from")
    meta = meta_sets.random_subset(len(val.labels), size=meta_size, seed=seed)
    return setup._replace(meta_indices=None if setup.meta_indices is None else meta,
                          selection_indices=meta, meta_labels=None, meta_split="val")


def redrawn_meta(pool: np.ndarray, first: np.ndarray, seed: int) -> EpochIndices:
    """Epoch -> a random meta set of len(first) from `pool`; epoch 0 -> `first`."""
    def meta_of_epoch(epoch: int) -> np.ndarray:
        if epoch == 0:
            return first
        return pool[meta_sets.random_subset(len(pool), size=len(first), seed=[seed, epoch])]
    return meta_of_epoch


def balanced_subset(labels: np.ndarray, pool: np.ndarray, *, size: int, num_classes: int,
                    seed: int, epoch: int = 0) -> np.ndarray:
    """A class-balanced subset of `pool` (the authors' Clothing1M loader loop:
    ruofanhu/CLID-MU@5cd0608, sota/dataloader_clothing1M.py: clothing_dataset.__init__()):
    the pool in a seeded random order, from which every class keeps its first size // K
    members.

    A class with fewer members keeps them all, so the subset has
    sum_c min(n_c, size // K) <= size samples, the same number for every seed and epoch.

    Args:
      labels: int [N] (noisy) labels of the whole split, indexed by `pool`'s values.
      pool: int64 [n] indices to draw from.
      size: the subset size the per-class cap is derived from (cap = size // K >= 1).
      num_classes: K.
      seed, epoch: the draw, a function of both (epoch 0 for a subset drawn once).

    Returns:
      int64 [<= size] sorted indices, a subset of `pool`.
    """
    cap = size // num_classes
    if cap < 1:
        raise ValueError(f"train_subset={size} is smaller than the number of classes "
                         f"{num_classes}")
    rng = np.random.default_rng([int(seed), _SUBSET_KEY, int(epoch)])
    order = pool[rng.permutation(len(pool))]
    classes = labels[order]
    by_class = np.argsort(classes, kind="stable")  # each class in the random order
    starts = np.searchsorted(classes[by_class], np.arange(num_classes))
    rank = np.empty(len(order), np.int64)
    rank[by_class] = np.arange(len(order)) - starts[classes[by_class]]
    return np.sort(order[rank < cap]).astype(np.int64)


def _with_subset(setup: Setup, *, size: int, seed: int, resample: bool) -> Setup:
    """Trains on a class-balanced subset of setup.train_indices (re-drawn per epoch)."""
    pool, labels, k = setup.train_indices, setup.noisy_labels, setup.dataset.num_classes
    if size > len(pool):
        raise ValueError(f"train_subset={size} exceeds the {len(pool)} training samples")

    def train_of_epoch(epoch: int) -> np.ndarray:
        return balanced_subset(labels, pool, size=size, num_classes=k, seed=seed, epoch=epoch)

    return setup._replace(train_indices=train_of_epoch(0),
                          train_of_epoch=train_of_epoch if resample else None)


def hold_out(pool: np.ndarray, fraction: float, seed: int, *,
             has_val: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(training pool, held-out indices or None): a seeded random `fraction` of `pool`."""
    if not fraction:
        return pool, None
    if has_val:
        raise ValueError("the dataset has its own validation split; drop --val_split")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_split={fraction} must lie in (0, 1)")
    size = int(round(fraction * len(pool)))
    if not 0 < size < len(pool):
        raise ValueError(f"val_split={fraction} of {len(pool)} training samples leaves "
                         "an empty part")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 17]))
    held = np.zeros(len(pool), bool)
    held[rng.choice(len(pool), size=size, replace=False)] = True
    return pool[~held], pool[held]


def noise_report(setup: Setup) -> dict:
    """Realised noise of the samples trained on: flip rate and transition matrix [K, K]."""
    clean = setup.dataset.train.clean_labels
    if clean is None:
        return {"realised_noise_rate": None}
    idx = setup.train_indices
    return {
        "realised_noise_rate": noise_lib.flip_rate(clean[idx], setup.noisy_labels[idx]),
        "noise_transition_matrix": np.round(noise_lib.transition_matrix(
            clean[idx], setup.noisy_labels[idx], num_classes=setup.dataset.num_classes),
            4).tolist(),
    }
