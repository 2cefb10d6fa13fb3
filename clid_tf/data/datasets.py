"""What a dataset is: its splits, each its `Inputs` with int64 labels beside them, its
classes and input statistics; and the label checks every loader shares.

Images are uint8 0..255 [H, W, C] from loading to serving; per-channel `mean`/`std` are in
[0, 1] pixel units. Flat feature vectors (npz only) are float32 [D] with per-feature
statistics in raw units. The sources of `clid_tf.data.sources` load them; label noise, meta-set splits and pipelines are built elsewhere.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from clid_tf.data import image_files
from clid_tf.data.inputs import ArrayInputs, FileInputs, Inputs, read_numpy
from clid_tf.errors import DataError

STATS_SAMPLE = 2000  # images read to estimate mean/std of a streamed dataset


class Split(NamedTuple):
    """One split: its inputs and their labels.

    Attributes:
      inputs: `Inputs` of N inputs.
      labels: int64 [N] labels as given: clean for a benchmark that gets synthetic noise,
        already noisy for human-noise sets (CIFAR-N) and for a user's own data.
      clean_labels: int64 [N] true labels when known (benchmarks), else None. Monitoring
        only: they never reach training or the meta step.
    """
    inputs: Inputs
    labels: np.ndarray
    clean_labels: np.ndarray | None = None


class Dataset(NamedTuple):
    """A dataset's splits and what describes them.

    Attributes:
      train: the training split.
      val: a validation split (a user's `val/` folder, an npz's x_val), or None.
      test: the test split, or None (a user's data may have none).
      num_classes: K.
      class_names: K names, index = label.
      mean, std: per-channel statistics of train/255 for images; per feature for vectors.
      labels_given: True when the labels are a user's own (npz, folder, list, tfds:NAME):
        no synthetic noise is injected into them unless asked for.
    """
    train: Split
    val: Split | None
    test: Split | None
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels_given: bool


# --------------------------------------------------------------------------- checks, stats

def check_labels(labels: np.ndarray, num_classes: int, *, what: str) -> None:
    """Labels must lie in [0, K) and every class must have a sample (no silent empty class).

    Raises:
      DataError: one line, e.g. for labels 1..10 ('class 0 has no samples').
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise DataError(f'the {what} are empty')
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f'the {what} must lie in [0, {num_classes}), found '
                        f'[{labels.min()}, {labels.max()}]')
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shift = ' (labels 1..K? subtract 1 so they run 0..K-1)' if list(empty) == [0] else ''
        raise DataError(f'class {", ".join(str(c) for c in empty[:5])} of the {what} has '
                        f'no samples: labels must run 0..{num_classes - 1}{shift}')


def array_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): per channel of x/255 for uint8 images, per feature for [N, D] floats."""
    if x.ndim == 2:
        values = x.astype(np.float64)
        std = values.std(axis=0)
        std[std == 0] = 1.0
        return tuple(float(v) for v in values.mean(axis=0)), tuple(float(v) for v in std)
    channels = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    std = channels.std(axis=0)
    std[std == 0] = 1.0
    return tuple(float(v) for v in channels.mean(axis=0)), tuple(float(v) for v in std)


def of_user_splits(train: Split, val: Split | None, test: Split | None,
                   class_names: Sequence[str]) -> "Dataset":
    """A `Dataset` of a user's own splits (labels used as given): the training labels
    checked against the classes, the input statistics from the training inputs."""
    check_labels(train.labels, len(class_names), what="training labels")
    mean, std = source_stats(train.inputs)
    return Dataset(train=train, val=val, test=test, num_classes=len(class_names),
                   class_names=class_names, mean=mean, std=std, labels_given=True)


def source_stats(source: Inputs, *, sample: int = STATS_SAMPLE,
                 seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`array_stats` of the whole split, or of a seeded sample of `sample` streamed inputs
    (image files are read with Pillow, so TensorFlow need not start)."""
    if isinstance(source, ArrayInputs):
        return array_stats(source.array)
    n = len(source)
    ids = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
    if isinstance(source, FileInputs):
        return array_stats(image_files.read_pixels(source.files.paths[ids],
                                                   source.element_shape))
    return array_stats(read_numpy(source, ids))


def tfds_location(data_dir: str | None) -> str:
    """The directory TFDS reads from: data_dir, else $TFDS_DATA_DIR, else its default."""
    return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR')
                              or os.path.join('~', 'tensorflow_datasets'))


def class_names_of(names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """Given class names, or '0'..'K-1'."""
    if names is None:
        return tuple(str(c) for c in range(num_classes))
    return tuple(str(n) for n in names)
