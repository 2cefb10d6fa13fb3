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

from clid_tf.errors import DataError

TFDS_NAMES = ('cifar10', 'cifar100', 'cifar10_n', 'cifar100_n')
NAMES = ('digits',) + TFDS_NAMES

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
    mean, std = _feature_stats(x_train)
    return Dataset(
            x_train=x_train, y_train=y_train, y_train_clean=y_train.copy(),
            x_test=x_test, y_test=y_test, num_classes=10, mean=mean, std=std)


# --------------------------------------------------------------------------- TFDS CIFAR(-N)

_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.265, 0.276))
_TFDS_BATCH = 10_000  # examples per tf.data batch while reading a split into numpy


class _TfdsSpec(NamedTuple):
    """What `load_tfds` needs to know about one TFDS dataset."""
    num_classes: int
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), METHOD.md section 5
    human_labels: tuple[str, ...]  # CLI names in HUMAN_LABELS; non-empty: one is required


_TFDS_SPECS = {
        'cifar10': _TfdsSpec(10, _CIFAR10_STATS, ()),
        'cifar100': _TfdsSpec(100, _CIFAR100_STATS, ()),
        'cifar10_n': _TfdsSpec(10, _CIFAR10_STATS, ('aggre', 'worst', 'rand1', 'rand2', 'rand3')),
        'cifar100_n': _TfdsSpec(100, _CIFAR100_STATS, ('noisy100',)),
}


def load_tfds(name: str, *, human_label: str | None = None,
              data_dir: str | None = None) -> Dataset:
    """CIFAR-10/100 or CIFAR-10N/100N from TensorFlow Datasets.

    For 'cifar10'/'cifar100', y_train = y_train_clean = the TFDS 'label'. For the human-noise
    sets, `human_label` picks the noisy train labels (CLI names in `HUMAN_LABELS`), and
    y_train_clean is 'label'. The test split always uses the clean 'label' (the noisy
    features are -1 there).

    Args:
        name: one of `TFDS_NAMES`.
        human_label: required for 'cifar10_n' ('aggre', 'worst', 'rand1', 'rand2', 'rand3')
            and 'cifar100_n' ('noisy100'); must be None for the others.
        data_dir: TFDS data directory; None uses $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Returns:
        `Dataset` with uint8 [N, 32, 32, 3] images, int64 labels in [0, K) and the
        METHOD.md per-channel mean/std.

    Raises:
        DataError: unknown name, a wrong/missing human_label, or a dataset that is not
            prepared and cannot be downloaded/prepared (e.g. offline).
    """
    spec = _tfds_spec(name)
    noisy_key = _noisy_label_key(name, spec, human_label)
    train = _read_tfds_split(name, 'train', data_dir)
    test = _read_tfds_split(name, 'test', data_dir)
    x_train = _tfds_images(name, 'train', train)
    x_test = _tfds_images(name, 'test', test)
    y_train_clean = _tfds_labels(name, 'train', train, 'label', spec.num_classes)
    y_train = _tfds_labels(name, 'train', train, noisy_key or 'label', spec.num_classes)
    y_test = _tfds_labels(name, 'test', test, 'label', spec.num_classes)
    mean, std = spec.stats
    return Dataset(
            x_train=x_train, y_train=y_train, y_train_clean=y_train_clean,
            x_test=x_test, y_test=y_test, num_classes=spec.num_classes, mean=mean, std=std)


def _tfds_spec(name: str) -> _TfdsSpec:
    """The `_TfdsSpec` of `name`, or a DataError naming the valid ones."""
    if name not in _TFDS_SPECS:
        raise DataError(f"unknown TFDS dataset {name!r}; valid: {', '.join(TFDS_NAMES)}")
    return _TFDS_SPECS[name]


def _no_human_labels(name: str, human_label: str) -> DataError:
    return DataError(f'dataset {name!r} has no human noisy labels; '
                     f'drop human_label={human_label!r} (only cifar10_n, cifar100_n)')


def _noisy_label_key(name: str, spec: _TfdsSpec, human_label: str | None) -> str | None:
    """The TFDS feature holding the noisy train labels, or None for a clean dataset."""
    if not spec.human_labels:
        if human_label is not None:
            raise _no_human_labels(name, human_label)
        return None
    if human_label is None:
        raise DataError(f'dataset {name!r} needs a human_label, one of '
                        f"{', '.join(spec.human_labels)}")
    if human_label not in spec.human_labels:
        raise DataError(f'dataset {name!r} has no human_label {human_label!r}; '
                        f"valid: {', '.join(spec.human_labels)}")
    return HUMAN_LABELS[human_label]


def _tfds_location(data_dir: str | None) -> str:
    """The directory TFDS reads from: data_dir, else $TFDS_DATA_DIR, else its default."""
    return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR')
                              or os.path.join('~', 'tensorflow_datasets'))


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
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split=split, batch_size=_TFDS_BATCH, as_supervised=False,
                       data_dir=data_dir)
        batches = list(tfds.as_numpy(ds))
    except Exception as err:  # download/prepare/read failures of any kind, e.g. offline
        raise _tfds_unavailable(name, data_dir, err) from err
    if not batches:
        raise DataError(f'TFDS dataset {name!r}: the {split} split is empty')
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _tfds_unavailable(name: str, data_dir: str | None, err: Exception) -> DataError:
    """The one-line DataError for a dataset TFDS could not download, prepare or read."""
    detail = ' '.join(str(err).split())[:200]
    manual = ' (plus the manual CIFAR-N label files)' if name.endswith('_n') else ''
    return DataError(
            f'TFDS dataset {name!r} is not available offline ({type(err).__name__}: {detail}); '
            f'prepare it{manual} with tfds on a machine with internet and copy it into '
            f'data_dir or $TFDS_DATA_DIR (looked in {_tfds_location(data_dir)})')


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


# --------------------------------------------------------------------------- user npz

_NPZ_REQUIRED = ('x_train', 'y_train', 'x_test', 'y_test')
_NPZ_OPTIONAL = ('y_train_clean',)
_ZIP_MAGIC = b'PK\x03\x04'


def load_npz(path: str | os.PathLike) -> Dataset:
    """A user's own data from an `np.savez` file.

    Arrays: x_train, y_train, x_test, y_test (required), y_train_clean (optional).

    Features, the same trailing shape in train and test:
        * images [N, H, W] (a channel axis is added) or [N, H, W, C] with C in {1, 3}.
          uint8 is kept. Other integer dtypes must lie in 0..255. Float images are on
          the [0, 1] scale when every value of both splits is <= 1, else on the [0, 255]
          scale; either way they are rounded to uint8 0..255 (one scale for both splits).
          mean/std: per-channel statistics of x_train/255.
        * flat feature vectors [N, D], any numeric dtype, kept as float32 (no scaling).
          mean/std: per-feature statistics of x_train (D floats; a constant feature gets
          std 1.0 so standardising never divides by zero).
    Labels are 1-D [N] integers >= 0 (floats are accepted when every value is integral).
    Num classes = max label + 1 over y_train, y_test and y_train_clean.

    Args:
        path: the .npz file.

    Returns:
        `Dataset`; y_train_clean is None when the file has none.

    Raises:
        DataError: one line naming the file and the problem.
    """
    path = os.fspath(path)
    arrays = _read_npz(path)
    y_train = _npz_labels(path, 'y_train', arrays['y_train'])
    y_test = _npz_labels(path, 'y_test', arrays['y_test'])
    y_clean = arrays.get('y_train_clean')
    if y_clean is not None:
        y_clean = _npz_labels(path, 'y_train_clean', y_clean)
        if y_clean.shape != y_train.shape:
            raise _npz_error(path, f'y_train_clean has shape {y_clean.shape}, '
                                   f'y_train has {y_train.shape}')
    _check_npz_split(path, 'train', arrays['x_train'], y_train)
    _check_npz_split(path, 'test', arrays['x_test'], y_test)
    x_train, x_test = _npz_features(path, arrays['x_train'], arrays['x_test'])
    num_classes = _npz_num_classes(path, y_train, y_test, y_clean)
    mean, std = _feature_stats(x_train)
    return Dataset(
            x_train=x_train, y_train=y_train, y_train_clean=y_clean,
            x_test=x_test, y_test=y_test, num_classes=num_classes, mean=mean, std=std)


def _npz_error(path: str, problem: str) -> DataError:
    """DataError 'npz file PATH: PROBLEM', kept on one line."""
    return DataError(' '.join(f'npz file {path}: {problem}'.split()))


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The required and optional arrays of the npz file, fully read into memory."""
    if not os.path.isfile(path):
        raise _npz_error(path, 'no such file' if not os.path.exists(path) else 'not a file')
    try:
        with open(path, 'rb') as f:
            magic = f.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise _npz_error(path, f'cannot read it ({err.strerror or err})') from err
    if magic != _ZIP_MAGIC:
        raise _npz_error(path, 'not an npz archive (write it with np.savez / np.savez_compressed)')
    try:
        with np.load(path, allow_pickle=False) as npz:
            return _npz_arrays(path, npz)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _npz_error(path, f'unreadable npz archive ({type(err).__name__}: {err})') from err


def _npz_arrays(path: str, npz: Any) -> dict[str, np.ndarray]:
    """Reads the known keys of an open `np.load` NpzFile; checks the required ones exist."""
    missing = [key for key in _NPZ_REQUIRED if key not in npz.files]
    if missing:
        found = ', '.join(npz.files) or 'nothing'
        raise _npz_error(path, f"missing arrays {', '.join(missing)} (found: {found})")
    arrays = {}
    for key in _NPZ_REQUIRED + _NPZ_OPTIONAL:
        if key not in npz.files:
            continue
        try:
            arrays[key] = np.asarray(npz[key])
        except ValueError as err:  # object arrays need pickle, refused by allow_pickle=False
            raise _npz_error(path, f'{key} is a pickled object array; save plain numeric '
                                   'arrays instead') from err
    return arrays


def _npz_labels(path: str, key: str, y: np.ndarray) -> np.ndarray:
    """int64 [N] labels from an integer (or integral float) 1-D array, all >= 0."""
    if y.ndim != 1:
        raise _npz_error(path, f'{key} must be 1-D [N] labels, got shape {y.shape}')
    if y.dtype.kind in 'iu':
        labels = y.astype(np.int64)
    elif y.dtype.kind == 'f' and np.isfinite(y).all() and np.all(y == np.round(y)):
        labels = y.astype(np.int64)
    else:
        raise _npz_error(path, f'{key} has non-integer labels (dtype {y.dtype})')
    if labels.size and labels.min() < 0:
        raise _npz_error(path, f'{key} has negative labels (min {labels.min()})')
    return labels


def _check_npz_split(path: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Checks x_split is 2-D/3-D/4-D, non-empty and as long as y_split."""
    if x.ndim not in (2, 3, 4):
        raise _npz_error(path, f'x_{split} must be [N, D], [N, H, W] or [N, H, W, C], '
                               f'got shape {x.shape}')
    if len(x) == 0 or len(y) == 0:
        raise _npz_error(path, f'the {split} split is empty')
    if len(x) != len(y):
        raise _npz_error(path, f'x_{split} has {len(x)} rows but y_{split} has {len(y)}')


def _npz_features(path: str, x_train: np.ndarray,
                  x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked, converted features: uint8 [N, H, W, C] images or float32 [N, D] vectors."""
    for split, x in (('train', x_train), ('test', x_test)):
        if x.dtype.kind not in 'biuf':
            raise _npz_error(path, f'x_{split} is not numeric (dtype {x.dtype})')
        if x.dtype.kind == 'f' and not np.isfinite(x).all():
            raise _npz_error(path, f'x_{split} contains NaN or Inf')
    x_train, x_test = (x[..., None] if x.ndim == 3 else x for x in (x_train, x_test))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _npz_error(path, f'x_train rows have shape {x_train.shape[1:]} '
                               f'but x_test rows have {x_test.shape[1:]}')
    if x_train.ndim == 2:
        return x_train.astype(np.float32), x_test.astype(np.float32)
    if x_train.shape[-1] not in (1, 3):
        raise _npz_error(path, f'images need 1 or 3 channels, got {x_train.shape[-1]} '
                               f'(shape {x_train.shape})')
    return _to_uint8_images(path, x_train, x_test)


def _to_uint8_images(path: str, x_train: np.ndarray,
                     x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 0..255 images from uint8, integer 0..255 or float [0, 1] / [0, 255] pixels."""
    if x_train.dtype == np.uint8 and x_test.dtype == np.uint8:
        return x_train, x_test
    if x_train.dtype.kind == 'b' or x_test.dtype.kind == 'b':
        raise _npz_error(path, 'images must be integer or float pixels, not bool')
    low = min(x_train.min(), x_test.min())
    high = max(x_train.max(), x_test.max())
    is_float = x_train.dtype.kind == 'f' or x_test.dtype.kind == 'f'
    scale = 255.0 if is_float and high <= 1.0 else 1.0
    if low < 0 or high > 255:
        raise _npz_error(path, f'image pixels must lie in [0, 1] or [0, 255], '
                               f'got [{low}, {high}]')
    return (np.rint(x_train * scale).astype(np.uint8),
            np.rint(x_test * scale).astype(np.uint8))


def _npz_num_classes(path: str, *labels: np.ndarray | None) -> int:
    """max label + 1 over the given label arrays; at least 2."""
    num_classes = max(int(y.max()) for y in labels if y is not None) + 1
    if num_classes < 2:
        raise _npz_error(path, f'needs at least 2 classes, labels give {num_classes}')
    return num_classes


def _feature_stats(x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): per channel of x/255 for uint8 images, per feature for [N, D] floats."""
    if x_train.ndim == 2:
        values = x_train.astype(np.float64)
        std = values.std(axis=0)
        std[std == 0] = 1.0
        return tuple(float(v) for v in values.mean(axis=0)), tuple(float(v) for v in std)
    channels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64) / 255.0
    return (tuple(float(v) for v in channels.mean(axis=0)),
            tuple(float(v) for v in channels.std(axis=0)))


# --------------------------------------------------------------------------- dispatch

def load(name: str, *, human_label: str | None = None, data_dir: str | None = None) -> Dataset:
    """Loads a dataset by CLI name.

    Args:
        name: 'digits', one of `TFDS_NAMES`, or 'npz:PATH' for a user's own file
            (see `load_npz`).
        human_label: the human noisy label set, for 'cifar10_n'/'cifar100_n' only
            (CLI names in `HUMAN_LABELS`).
        data_dir: TFDS data directory (TFDS datasets only).

    Returns:
        The `Dataset`.

    Raises:
        DataError: unknown name, a human_label where none exists, or any loader failure.
    """
    if name in TFDS_NAMES:
        return load_tfds(name, human_label=human_label, data_dir=data_dir)
    if name == 'digits' or name.startswith('npz:'):
        if human_label is not None:
            raise _no_human_labels(name, human_label)
        if name == 'digits':
            return load_digits()
        if not name[len('npz:'):]:
            raise DataError("'npz:' needs a file path, e.g. npz:/data/mine.npz")
        return load_npz(name[len('npz:'):])
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}, or npz:PATH")
