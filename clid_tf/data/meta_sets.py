"""Which training samples form the meta set: label-free or class-balanced. Pure numpy, seeded."""

from __future__ import annotations

from typing import Callable

import numpy as np


# The seed offset of a second network's meta set (DivideMix's net 2; a prime, so that the
# two draws differ).
SECOND_SET_SEED_OFFSET = 7919


def random_subset(num_train: int, *, size: int, seed: int) -> np.ndarray:
    """CLID-MU's meta set: `size` indices drawn uniformly without replacement.

    The samples stay in the training set and their labels are never read.
    Returns int64 [size], sorted.
    """
    if not 0 < size <= num_train:
        raise ValueError(f"meta_size={size} must be in [1, {num_train}] (the training set size)")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=size, replace=False)).astype(np.int64)


def balanced_split(labels: np.ndarray, *, size: int, num_classes: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Meta-Weight-Net's labelled meta set: size // K samples per class of `labels`.

    As in ruofanhu/CLID-MU@5cd0608, dataloader.py: split_meta_train(), classes are balanced by the
    (noisy) label the data carries, and the meta samples are removed from training.

    Args:
      labels: int [N] labels used for stratification.
    Returns:
      (meta indices int64 [size // K * K], remaining training indices int64), both sorted.
    """
    per_class = size // num_classes
    if per_class < 1:
        raise ValueError(f"meta_size={size} is smaller than the number of classes {num_classes}")
    meta = per_class_choice(
        labels, per_class=per_class, num_classes=num_classes, rng=np.random.default_rng(seed),
        too_few=lambda c, n: f"meta_size={size} needs {per_class} samples of class {c} "
                             f"and training must keep some; class {c} has {n}")
    rest = np.setdiff1d(np.arange(len(labels)), meta).astype(np.int64)
    return meta, rest


def per_class_choice(labels: np.ndarray, *, per_class: int, num_classes: int,
                     rng: np.random.Generator,
                     too_few: Callable[[int, int], str]) -> np.ndarray:
    """int64 sorted: `per_class` random members of every class 0..K-1 of `labels` [N],
    drawn class by class from `rng`. A class with n <= per_class members (some must be
    left out) raises ValueError(too_few(class, n))."""
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise ValueError(too_few(c, len(members)))
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
