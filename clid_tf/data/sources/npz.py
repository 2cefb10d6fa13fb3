"""A user's own arrays from an `np.savez` file: `--dataset=npz:PATH`.

Arrays: x_train, y_train (required); x_val, y_val, x_test, y_test (optional pairs: a
validation split and a test split); y_train_clean (optional, true training labels for
monitoring only); class_names (optional 1-D string array, index = label).

Features, the same trailing shape in every split:
    * images [N, H, W] (a channel axis is added) or [N, H, W, C] with C in {1, 3}. uint8 is
      kept. Other integer dtypes must lie in 0..255. Float images are on the [0, 1] scale
      when every value of every split is <= 1, else on the [0, 255] scale; either way they
      are rounded to uint8 0..255 (one scale for all splits). mean/std: per-channel
      statistics of x_train/255.
    * flat feature vectors [N, D], any numeric dtype, kept as float32 (no scaling).
      mean/std: per-feature statistics of x_train (a constant feature gets std 1.0).
Labels are 1-D [N] integers in [0, K) (floats are accepted when every value is integral);
K = len(class_names), or the max label + 1 over all label arrays; every class must have a
training sample (labels 1..K are refused, not read as K + 1 classes with an empty class 0).
The labels are the user's: no noise is injected into them unless asked for.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from clid_tf import atomic_io
from clid_tf.data import datasets
from clid_tf.data.inputs import ArrayInputs, float_pixel_scale
from clid_tf.errors import DataError

_NPZ_REQUIRED = ('x_train', 'y_train')
_NPZ_PAIRS = (('x_val', 'y_val'), ('x_test', 'y_test'))
_NPZ_OPTIONAL = ('x_val', 'y_val', 'x_test', 'y_test', 'y_train_clean', 'class_names')
_ZIP_MAGIC = b'PK\x03\x04'


def load(path: str | os.PathLike) -> datasets.Dataset:
    """The `datasets.Dataset` of an npz file (see the module docstring).

    Raises:
        DataError: one line naming the file and the problem.
    """
    path = os.fspath(path)
    arrays = _read_npz(path)
    for x_key, y_key in _NPZ_PAIRS:
        if (x_key in arrays) != (y_key in arrays):
            present, missing = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise _npz_error(path, f'{present} needs {missing} beside it')
    splits = ['train'] + [x[2:] for x, _ in _NPZ_PAIRS if x in arrays]
    labels = {split: _npz_labels(path, f'y_{split}', arrays[f'y_{split}']) for split in splits}
    y_clean = arrays.get('y_train_clean')
    if y_clean is not None:
        y_clean = _npz_labels(path, 'y_train_clean', y_clean)
        if y_clean.shape != labels['train'].shape:
            raise _npz_error(path, f'y_train_clean has shape {y_clean.shape}, '
                                   f'y_train has {labels["train"].shape}')
    for split in splits:
        _check_npz_split(path, split, arrays[f'x_{split}'], labels[split])
    if 'class_names' not in arrays:
        top = int(labels['train'].max())
        if top >= len(labels['train']):
            raise _npz_error(path, f'y_train has the label {top}, so {top + 1} classes, but '
                                   f'only {len(labels["train"])} training samples: every class '
                                   'needs a training sample (labels run 0..K-1)')
        for split in splits[1:]:
            if labels[split].max() > top:
                raise _npz_error(path, f'y_{split} has label {labels[split].max()}, above every '
                                       f'training label (y_train uses 0..{top}): a class with '
                                       f'no training sample cannot be learnt; fix y_{split}, '
                                       'or give class_names')
    xs = _npz_features(path, {split: arrays[f'x_{split}'] for split in splits})
    class_names = _npz_class_names(
        path, arrays.get('class_names'),
        list(labels.values()) + ([] if y_clean is None else [y_clean]))
    num_classes = len(class_names)
    for split, y in [*labels.items(), ('train_clean', y_clean)]:
        if y is not None and y.max() >= num_classes:
            raise _npz_error(path, f'y_{split} has label {y.max()} but class_names names '
                                   f'{num_classes} classes')
    try:
        datasets.check_labels(labels['train'], num_classes, what='training labels')
    except DataError as error:
        raise _npz_error(path, str(error)) from error
    mean, std = datasets.array_stats(xs['train'])

    def split_of(name):
        if name not in xs:
            return None
        return datasets.Split(ArrayInputs(xs[name]), labels[name],
                              y_clean if name == 'train' else None)

    return datasets.Dataset(train=split_of('train'), val=split_of('val'),
                            test=split_of('test'), num_classes=num_classes,
                            class_names=class_names, mean=mean, std=std, labels_given=True)


def _npz_error(path: str, problem: str) -> DataError:
    """DataError 'npz file PATH: PROBLEM', kept on one line."""
    return DataError(' '.join(f'npz file {path}: {problem}'.split()))


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The required and optional arrays of the npz file, fully read into memory (each
    array's declared size checked first, `atomic_io.read_npz`)."""
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
        arrays = atomic_io.read_npz(path, _NPZ_REQUIRED + _NPZ_OPTIONAL)
    except ValueError as err:  # a pickled array, a declared size the file does not hold
        raise _npz_error(path, str(err)) from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise _npz_error(path, f'unreadable npz archive ({type(err).__name__}: {err})') from err
    missing = [key for key in _NPZ_REQUIRED if key not in arrays]
    if missing:
        found = ', '.join(arrays) or 'nothing'
        raise _npz_error(path, f"missing arrays {', '.join(missing)} (found: {found})")
    return arrays


def _npz_labels(path: str, key: str, y: np.ndarray) -> np.ndarray:
    """int64 [N] labels from an integer (or integral float) 1-D array, all >= 0."""
    if y.ndim != 1:
        raise _npz_error(path, f'{key} must be 1-D [N] labels, got shape {y.shape}')
    if y.dtype.kind == 'f' and not (np.isfinite(y).all() and np.all(y == np.round(y))):
        raise _npz_error(path, f'{key} has non-integer labels (dtype {y.dtype})')
    if y.dtype.kind not in 'iuf':
        raise _npz_error(path, f'{key} has non-integer labels (dtype {y.dtype})')
    if y.size and y.max() >= 2 ** 62:  # no int64 overflow (load() bounds K by the samples)
        top = int(y.max()) if y.dtype.kind in 'iu' else f'{y.max():g}'
        raise _npz_error(path, f'{key} has the label {top}: labels are class ids 0..K-1 and '
                               'every class needs a training sample')
    labels = y.astype(np.int64)
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


def _npz_features(path: str, xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checked, converted features of every split: uint8 [N, H, W, C] images or float32
    [N, D] vectors, one trailing shape and (for images) one pixel scale for all splits."""
    for split, x in xs.items():
        if x.dtype.kind not in 'biuf':
            raise _npz_error(path, f'x_{split} is not numeric (dtype {x.dtype})')
        if x.dtype.kind == 'f' and not np.isfinite(x).all():
            raise _npz_error(path, f'x_{split} contains NaN or Inf')
    xs = {split: x[..., None] if x.ndim == 3 else x for split, x in xs.items()}
    shape = xs['train'].shape[1:]
    for split, x in xs.items():
        if x.shape[1:] != shape:
            raise _npz_error(path, f'x_train rows have shape {shape} '
                                   f'but x_{split} rows have {x.shape[1:]}')
    if len(shape) == 1:
        return {split: x.astype(np.float32) for split, x in xs.items()}
    if shape[-1] not in (1, 3):
        raise _npz_error(path, f'images need 1 or 3 channels, got {shape[-1]} '
                               f'(shape {xs["train"].shape})')
    return _to_uint8_images(path, xs)


def _to_uint8_images(path: str, xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 0..255 images from uint8, integer 0..255 or float [0, 1] / [0, 255] pixels
    (`inputs.float_pixel_scale`: round-off above 1 stays the [0, 1] scale, an ambiguous
    maximum is refused)."""
    if all(x.dtype == np.uint8 for x in xs.values()):
        return xs
    if any(x.dtype.kind == 'b' for x in xs.values()):
        raise _npz_error(path, 'images must be integer or float pixels, not bool')
    scales = {}
    for split, x in xs.items():
        if x.dtype.kind != 'f':
            if x.min() < 0 or x.max() > 255:
                raise _npz_error(path, f'x_{split}: image pixels must lie in [0, 255] '
                                       f'(integers), got [{x.min()}, {x.max()}]')
            scales[split] = 1.0
            continue
        try:
            scales[split] = float_pixel_scale(float(x.min()), float(x.max()), f'x_{split}')
        except ValueError as error:
            raise _npz_error(path, str(error)) from None
    if len(set(scales.values())) > 1:
        unit = next(s for s, v in scales.items() if v == 255.0)
        pixel = next(s for s, v in scales.items() if v == 1.0)
        raise _npz_error(path, f'x_{unit} is in [0, 1] but x_{pixel} in [0, 255]: '
                               'save every split on one pixel scale')
    return {split: np.rint(np.clip(x * scales[split], 0, 255)).astype(np.uint8)
            for split, x in xs.items()}


def _npz_class_names(path: str, names: np.ndarray | None,
                     labels: list[np.ndarray]) -> tuple[str, ...]:
    """The file's class_names (a 1-D string array), or '0'..'K-1' with K = max label + 1."""
    if names is None:
        num_classes = max(int(y.max()) for y in labels) + 1
        if num_classes < 2:
            raise _npz_error(path, f'needs at least 2 classes, labels give {num_classes}')
        return datasets.class_names_of(None, num_classes)
    if names.ndim != 1 or names.dtype.kind not in 'US':
        raise _npz_error(path, f'class_names must be a 1-D array of strings, got '
                               f'{names.dtype} {names.shape}')
    if len(names) < 2:
        raise _npz_error(path, f'needs at least 2 classes, class_names has {len(names)}')
    return tuple(str(n) for n in names)


class NpzSource:
    """The `Source` of 'npz:PATH'."""

    name = 'npz'
    prefixed = True
    options = frozenset()
    human_labels = ()
    example = 'npz:/data/mine.npz'
    summary = 'arrays'

    def load(self, argument: str, **options) -> datasets.Dataset:
        del options
        return load(argument)

    def claims(self, path: str) -> bool:
        return path.endswith('.npz')


SOURCES = (NpzSource(),)
