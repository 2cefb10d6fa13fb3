"""Raw datasets as numpy arrays: offline digits, TFDS CIFAR(-N) and a user's own npz file.

Every loader returns a `Dataset` of *raw* arrays; label noise, meta-set splits and tf.data
pipelines are built elsewhere. Images are uint8 [N, H, W, C] in 0..255 so that one
convention holds from loading to serving; per-channel `mean`/`std` are in [0, 1] pixel units.
Flat feature vectors (npz only) stay float32 [N, D] with per-feature `mean`/`std` in raw units.

`load(name)` is the one entry point: 'digits', a name in `TFDS_NAMES`, or 'npz:PATH'.
Every failure the user can fix is a `DataError` with a one-line message.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, NamedTuple

import numpy as np


class DataError(ValueError):
    """Bad or missing data; the message is one line meant for the user."""


class Dataset(NamedTuple):
    """Raw arrays of one dataset.

    Attributes:
        x_train: uint8 [N, H, W, C] images (or float32 [N, D] feature vectors).
        y_train: int64 [N], training labels as given: clean for benchmarks with synthetic
            noise, already noisy for human-noise sets (CIFAR-N) or a user's own data.
        y_train_clean: int64 [N] true labels when known, else None. Monitoring only.
        x_test: like x_train, [M, ...].
        y_test: int64 [M], clean test labels.
        num_classes: K.
        mean: per-channel mean of x/255 (tuple of C floats), used to standardise inputs;
            for float32 [N, D] features, the per-feature mean of x_train (D floats).
        std: per-channel std of x/255; for [N, D] features, the per-feature std (D floats).
    """
    x_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_digits(*, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), a fixed stratified split.

    The 0..16 grey levels are rescaled to 0..255 uint8 so digits look like any other image
    dataset to the pipeline and the exported model.
    """
    from sklearn import datasets as sk_datasets
    from sklearn import model_selection

    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
            images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels)
    pixels = x_train.astype(np.float64) / 255.0
    return Dataset(
            x_train=x_train, y_train=y_train, y_train_clean=y_train.copy(),
            x_test=x_test, y_test=y_test, num_classes=10,
            mean=(float(pixels.mean()),), std=(float(pixels.std()),))
