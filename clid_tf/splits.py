"""A run's data after noise injection and the meta-set split (METHOD.md sections 3, 4).

numpy only: every check of the user's data and sizes happens here, before TensorFlow is
imported, so bad input is reported as one line.
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
    """Data of one run after noise injection and the meta-set split.

    Attributes:
      dataset: the raw `datasets.Dataset`.
      noisy_labels: int64 [N] training labels the classifier sees (all N samples).
      train_indices: int64 [N_train] samples trained on.
      meta_indices: int64 [M] meta-set samples, or None for method 'ce'.
      meta_labels: int64 [M] labels the meta objective reads, or None (label-free).
      selection_indices: int64 [M] unlabelled samples whose CLID ranks epochs for label-free
        checkpoint selection: the meta set, or for 'ce' a random subset of the same size.
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_indices: np.ndarray | None
    meta_labels: np.ndarray | None
    selection_indices: np.ndarray


def prepare(*, dataset: str, data_dir: str | None, noise: str, noise_rate: float,
            human_noise: bool, method: str, meta_size: int, batch_size: int,
            meta_batch_size: int, seed: int, imbalance_gamma: float = 1.0) -> Setup:
    """Loads data, injects noise, splits the meta set and checks the batch sizes.

    Raises:
      ValueError or datasets.DataError with a one-line message on bad input.
    """
    setup = _split(dataset=dataset, data_dir=data_dir, noise=noise, noise_rate=noise_rate,
                   human_noise=human_noise, method=method, meta_size=meta_size, seed=seed,
                   imbalance_gamma=imbalance_gamma)
    if batch_size > len(setup.train_indices):
        raise ValueError(f"batch_size={batch_size} exceeds the "
                         f"{len(setup.train_indices)} training samples")
    if meta_batch_size > len(setup.selection_indices):
        raise ValueError(f"meta_batch_size={meta_batch_size} exceeds the meta set "
                         f"({len(setup.selection_indices)} samples)")
    return setup


def _split(*, dataset, data_dir, noise, noise_rate, human_noise, method, meta_size,
           seed, imbalance_gamma) -> Setup:
    ds = datasets.load(dataset, human_label=noise if human_noise else None, data_dir=data_dir)
    if human_noise:
        noisy = ds.y_train.astype(np.int64)
    else:
        noisy = noise_lib.corrupt(ds.y_train, kind=noise, rate=noise_rate,
                                  num_classes=ds.num_classes, seed=seed, images=ds.x_train)
    # Long-tailed subset, selected by true label after noise injection (reference).
    true = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train
    pool = (noise_lib.imbalance_indices(true, gamma=imbalance_gamma, seed=seed,
                                        num_classes=ds.num_classes)
            if imbalance_gamma > 1.0 else np.arange(len(noisy), dtype=np.int64))
    if method in ("ce", *LABEL_FREE):
        meta = pool[meta_sets.random_subset(len(pool), size=meta_size, seed=seed)]
        return Setup(ds, noisy, pool, None if method == "ce" else meta, None, meta)
    if method in SMALL_LOSS:  # re-selected each epoch (clid_tf.sloss); samples stay in training
        meta, _ = meta_sets.balanced_split(noisy[pool], size=meta_size,
                                           num_classes=ds.num_classes, seed=seed)
        meta = pool[meta]
        return Setup(ds, noisy, pool, meta, noisy[meta].astype(np.int64), meta)
    if method == "ce_clean" and ds.y_train_clean is None:
        raise ValueError(f"method ce_clean needs clean training labels; dataset {dataset} "
                         "has none (give y_train_clean in the npz)")
    meta, rest = meta_sets.balanced_split(noisy[pool], size=meta_size,
                                          num_classes=ds.num_classes, seed=seed)
    meta, rest = pool[meta], pool[rest]
    source = ds.y_train_clean if method == "ce_clean" else noisy
    return Setup(ds, noisy, rest, meta, source[meta].astype(np.int64), meta)


def noise_report(setup: Setup) -> dict:
    """Realised noise of the samples trained on: flip rate and transition matrix [K, K]."""
    clean = setup.dataset.y_train_clean
    if clean is None:
        return {"realised_noise_rate": None}
    idx = setup.train_indices
    return {
        "realised_noise_rate": noise_lib.flip_rate(clean[idx], setup.noisy_labels[idx]),
        "noise_transition_matrix": np.round(noise_lib.transition_matrix(
            clean[idx], setup.noisy_labels[idx], num_classes=setup.dataset.num_classes),
            4).tolist(),
    }
