"""CIFAR-10/100 and CIFAR-10N/100N from TensorFlow Datasets, read into memory.

The benchmarks of the paper: 50 000 32x32x3 training images per set (150 MB as uint8), held
as arrays (`ArrayInputs`). CIFAR-10/100 labels are clean (synthetic noise is added
by `clid_tf.data.noise`); CIFAR-N's training labels are one of its human label sets.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

import numpy as np

from clid_tf.data import datasets
from clid_tf.data.inputs import ArrayInputs
from clid_tf.data.sources import tfds as tfds_source
from clid_tf.errors import DataError

# CLI name of a human-noise label set -> its TFDS feature (tensorflow_datasets 4.9.x
# image_classification/cifar10_n and cifar100_n). These features are -1 on the test split.
HUMAN_LABELS = {
    'aggre': 'aggre_label',
    'worst': 'worse_label',
    'rand1': 'random_label1',
    'rand2': 'random_label2',
    'rand3': 'random_label3',
    'noisy100': 'noise_label',
}
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.265, 0.276))
_TFDS_BATCH = 10_000  # examples per tf.data batch while reading a split into numpy
# A host TFDS downloads from; unreachable means offline (checked in well under a second).
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


class _TfdsSpec(NamedTuple):
    """What `load` needs to know about one TFDS dataset."""
    num_classes: int
    # (mean, std), the authors' values (ruofanhu/CLID-MU@5cd0608, main_vri.py: build_dataset())
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    human_labels: tuple[str, ...]  # CLI names in HUMAN_LABELS; non-empty: one is required


_TFDS_SPECS = {
        'cifar10': _TfdsSpec(10, _CIFAR10_STATS, ()),
        'cifar100': _TfdsSpec(100, _CIFAR100_STATS, ()),
        'cifar10_n': _TfdsSpec(10, _CIFAR10_STATS, ('aggre', 'worst', 'rand1', 'rand2', 'rand3')),
        'cifar100_n': _TfdsSpec(100, _CIFAR100_STATS, ('noisy100',)),
}
NAMES = tuple(_TFDS_SPECS)


def load(name: str, *, human_label: str | None = None,
         data_dir: str | None = None) -> datasets.Dataset:
    """CIFAR-10/100 or CIFAR-10N/100N.

    For 'cifar10'/'cifar100' the train labels are the clean TFDS 'label'. For the human-noise
    sets, `human_label` picks the noisy train labels (CLI names in `HUMAN_LABELS`) and the
    clean 'label' is kept for monitoring. The test split always uses the clean 'label' (the
    noisy features are -1 there).

    Args:
        name: one of `NAMES`.
        human_label: required for 'cifar10_n' ('aggre', 'worst', 'rand1', 'rand2', 'rand3')
            and 'cifar100_n' ('noisy100'); None for the others.
        data_dir: TFDS data directory; None uses $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Returns:
        `datasets.Dataset` of uint8 [32, 32, 3] images, int64 labels in [0, K), the authors'
        per-channel mean/std (ruofanhu/CLID-MU@5cd0608, main_vri.py: build_dataset()) and
        TFDS's class names.

    Raises:
        DataError: unknown name, a wrong/missing human_label, or a dataset that is not
            prepared and cannot be downloaded (offline: reported at once, no retries).
    """
    if name not in _TFDS_SPECS:
        raise DataError(f"unknown TFDS dataset {name!r}; valid: {', '.join(NAMES)}")
    spec = _TFDS_SPECS[name]
    noisy_key = _noisy_label_key(name, spec, human_label)
    train = _read_tfds_split(name, 'train', data_dir)
    test = _read_tfds_split(name, 'test', data_dir)
    y_train_clean = _tfds_labels(name, 'train', train, 'label', spec.num_classes)
    y_train = _tfds_labels(name, 'train', train, noisy_key or 'label', spec.num_classes)
    mean, std = spec.stats
    return datasets.Dataset(
            train=datasets.Split(ArrayInputs(_tfds_images(name, 'train', train)),
                                 y_train, y_train_clean),
            val=None,
            test=datasets.Split(ArrayInputs(_tfds_images(name, 'test', test)),
                                _tfds_labels(name, 'test', test, 'label', spec.num_classes)),
            num_classes=spec.num_classes, class_names=_class_names(name, spec, data_dir),
            mean=mean, std=std, labels_given=False)


def _class_names(name: str, spec: _TfdsSpec, data_dir: str | None) -> tuple[str, ...]:
    """TFDS's names of the 'label' classes (defined in the package: no download)."""
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
        names = tfds.builder(name, data_dir=data_dir).info.features['label'].names
    except Exception:  # pylint: disable=broad-except  # names are cosmetic
        names = None
    return datasets.class_names_of(names if names and len(names) == spec.num_classes else None,
                                   spec.num_classes)


def online() -> bool:
    """Whether TFDS's download host is reachable (a TCP connect with a 3 s timeout)."""
    try:
        socket.create_connection(_DOWNLOAD_HOST, timeout=3).close()
        return True
    except OSError:
        return False


def _check_prepared(name: str, data_dir: str | None) -> None:
    """A dataset that is not prepared and cannot be downloaded fails now, in one line,
    instead of after minutes of download retries; online, TFDS downloads it as usual."""
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
        prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  # let tfds.load report it
        return
    if not prepared and not online():
        raise _tfds_unavailable(name, data_dir, None)


def _noisy_label_key(name: str, spec: _TfdsSpec, human_label: str | None) -> str | None:
    """The TFDS feature holding the noisy train labels, or None for a clean dataset."""
    if not spec.human_labels:
        return None
    if human_label is None:
        raise DataError(f'dataset {name!r} needs a human_label, one of '
                        f"{', '.join(spec.human_labels)}")
    if human_label not in spec.human_labels:
        raise DataError(f'dataset {name!r} has no human_label {human_label!r}; '
                        f"valid: {', '.join(spec.human_labels)}")
    return HUMAN_LABELS[human_label]


def _read_tfds_split(name: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
    """Reads a whole TFDS split into numpy (downloading/preparing it first when needed).

    `tfds.load(batch_size=-1)` is avoided on purpose: when the split sizes are unknown
    (e.g. under `tfds.testing.mock_data`) TFDS batches by sys.maxsize, which aborts the
    process in TF 2.21 (std::length_error). Fixed-size batches are concatenated instead.

    Returns:
        feature name -> array with a leading [N] axis ('image' is uint8 [N, 32, 32, 3]).

    Raises:
        DataError: the dataset could not be downloaded, prepared or read.
    """
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    tfds_source.check_feature_types(name, data_dir)  # before TFDS reads the folder
    _check_prepared(name, data_dir)
    try:
        ds = tfds.load(name, split=split, batch_size=_TFDS_BATCH, as_supervised=False,
                       data_dir=data_dir)
        batches = list(tfds.as_numpy(ds))
    except Exception as err:  # download/prepare/read failures of any kind, e.g. offline
        raise _tfds_unavailable(name, data_dir, err) from err
    if not batches:
        raise DataError(f'TFDS dataset {name!r}: the {split} split is empty')
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _tfds_unavailable(name: str, data_dir: str | None, err: Exception | None) -> DataError:
    """The one-line DataError for a dataset TFDS could not download, prepare or read."""
    detail = ('not prepared, and this machine is offline' if err is None else
              f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
    manual = ' (plus the manual CIFAR-N label files)' if name.endswith('_n') else ''
    return DataError(
            f'TFDS dataset {name!r} is not available ({detail}); prepare it{manual} on a '
            f'machine with internet (python -m tensorflow_datasets.scripts.download_and_prepare '
            f'--datasets={name}) and copy it into --data_dir or $TFDS_DATA_DIR (looked in '
            f'{datasets.tfds_location(data_dir)})')


def _tfds_feature(name: str, split: str, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """arrays[key], or a DataError if this TFDS version has no such feature."""
    if key not in arrays:
        raise DataError(f'TFDS dataset {name!r} ({split}) has no feature {key!r}; '
                        f'found: {", ".join(sorted(arrays))}')
    return arrays[key]


def _tfds_images(name: str, split: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The uint8 [N, 32, 32, 3] 'image' feature."""
    images = _tfds_feature(name, split, arrays, 'image')
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f'TFDS dataset {name!r} ({split}): expected images [N, 32, 32, 3], '
                        f'got {images.shape}')
    return images.astype(np.uint8, copy=False)


def _tfds_labels(name: str, split: str, arrays: dict[str, np.ndarray], key: str,
                 num_classes: int) -> np.ndarray:
    """The int64 [N] feature `key`, checked to lie in [0, num_classes)."""
    labels = _tfds_feature(name, split, arrays, key).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f'TFDS dataset {name!r} ({split}): {key!r} has values outside '
                        f'[0, {num_classes}) (min {labels.min()}, max {labels.max()})')
    return labels




class CifarSource:
    """The `Source` of one of 'cifar10', 'cifar100', 'cifar10_n', 'cifar100_n'."""

    prefixed = False
    example = 'cifar10'
    summary = 'TFDS'

    def __init__(self, name: str):
        self.name = name
        self.human_labels = _TFDS_SPECS[name].human_labels
        self.options = frozenset({'data_dir', *(('human_label',) if self.human_labels else ())})

    def load(self, argument: str, *, data_dir: str | None = None,
             human_label: str | None = None) -> datasets.Dataset:
        del argument
        return load(self.name, human_label=human_label, data_dir=data_dir)

    def claims(self, path: str) -> bool:
        del path
        return False


SOURCES = tuple(CifarSource(name) for name in NAMES)
