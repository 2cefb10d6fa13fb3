"""A run's data after noise injection and the held-out and meta splits (METHOD.md 3, 4).

numpy only, on labels and indices: every check of the user's data and sizes happens here,
before TensorFlow is imported, so bad input is reported as one line. The inputs themselves
stay in their `sources.Source`; a split is a set of indices into the training split.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clid_tf import datasets
from clid_tf import meta_sets
from clid_tf import noise as noise_lib

LABEL_FREE = ("clid", "entropy")
SMALL_LOSS = ("ce_sloss", "mae_sloss")


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
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_indices: np.ndarray | None
    meta_labels: np.ndarray | None
    selection_indices: np.ndarray
    val_indices: np.ndarray | None = None


def prepare(dataset: datasets.Dataset, *, noise: str, noise_rate: float, method: str,
            meta_size: int, batch_size: int, meta_batch_size: int, seed: int,
            val_split: float = 0.0, imbalance_gamma: float = 1.0) -> Setup:
    """Injects noise, holds out `val_split`, splits the meta set and checks the sizes.

    Args:
      dataset: the loaded data.
      noise: a `noise.KINDS` name ('none' keeps the labels) or a CIFAR-N label-set name
        (`datasets.HUMAN_LABELS`, already loaded as the labels: kept).
      noise_rate: rate of the synthetic noise.
      method: the training method (which meta set it needs).
      meta_size, batch_size, meta_batch_size: sizes, checked against the data.
      seed: seed of the noise, the held-out split and the meta set.
      val_split: fraction of the training split held out for validation (noisy labels).
      imbalance_gamma: > 1 keeps a long-tailed subset (by true label).

    Raises:
      ValueError or DataError with a one-line message on bad input.
    """
    setup = _split(dataset, noise=noise, noise_rate=noise_rate, method=method,
                   meta_size=meta_size, seed=seed, val_split=val_split,
                   imbalance_gamma=imbalance_gamma)
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
    if noise == "none" or noise in datasets.HUMAN_LABELS:
        return train.labels.astype(np.int64)
    images = getattr(train.inputs, "array", None)
    if noise == "instance" and images is None:
        raise ValueError("instance noise needs the training images in memory (arrays); "
                         "file data cannot use it")
    return noise_lib.corrupt(train.labels, kind=noise, rate=noise_rate,
                             num_classes=dataset.num_classes, seed=seed, images=images)


def _split(dataset, *, noise, noise_rate, method, meta_size, seed, val_split,
           imbalance_gamma) -> Setup:
    noisy = noisy_training_labels(dataset, noise=noise, noise_rate=noise_rate, seed=seed)
    k = dataset.num_classes
    # Long-tailed subset, selected by true label after noise injection (reference).
    clean = dataset.train.clean_labels
    true = clean if clean is not None else dataset.train.labels
    pool = (noise_lib.imbalance_indices(true, gamma=imbalance_gamma, seed=seed, num_classes=k)
            if imbalance_gamma > 1.0 else np.arange(len(noisy), dtype=np.int64))
    pool, val = hold_out(pool, val_split, seed, has_val=dataset.val is not None)
    if method in ("ce", *LABEL_FREE):
        meta = pool[meta_sets.random_subset(len(pool), size=meta_size, seed=seed)]
        return Setup(dataset, noisy, pool, None if method == "ce" else meta, None, meta, val)
    if method in SMALL_LOSS:  # re-selected each epoch (clid_tf.sloss); samples stay in training
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
