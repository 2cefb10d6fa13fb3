"""Tests for clid_tf.data.sources.npz: a user's arrays, every error as one line."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pytest

from clid_tf.data import sources
from clid_tf.data.sources import npz as npz_data
from clid_tf.errors import DataError
from tests.helpers import checks


def _valid_arrays(x_shape: tuple[int, ...] = (6, 4, 4, 3)) -> dict[str, np.ndarray]:
    """A small valid set: 6 train and 3 test rows of uint8 features, 3 classes."""
    rng = np.random.default_rng(0)
    return {
            'x_train': rng.integers(0, 256, x_shape, dtype=np.uint8),
            'y_train': np.array([0, 1, 2, 0, 1, 2]),
            'x_test': rng.integers(0, 256, (3,) + x_shape[1:], dtype=np.uint8),
            'y_test': np.array([2, 1, 0]),
    }


def _save(tmp_path: Any, arrays: dict[str, np.ndarray]) -> str:
    path = os.path.join(tmp_path, 'data.npz')
    np.savez(path, **arrays)
    return path


def test_npz_images_hw_gets_channel_axis(tmp_path: Any) -> None:
    arrays = _valid_arrays((6, 5, 7))
    data = sources.load('npz:' + _save(tmp_path, arrays))
    assert data.train.inputs.array.shape == (6, 5, 7, 1) and data.train.inputs.array.dtype == np.uint8
    assert data.test.inputs.array.shape == (3, 5, 7, 1)
    np.testing.assert_array_equal(data.train.inputs.array[..., 0], arrays['x_train'])
    np.testing.assert_array_equal(data.train.labels, arrays['y_train'])
    assert data.train.labels.dtype == np.int64 and data.train.clean_labels is None
    assert data.num_classes == 3
    assert data.mean == pytest.approx((arrays['x_train'].mean() / 255,))
    assert data.std == pytest.approx((arrays['x_train'].std() / 255,))


def test_npz_images_hwc_round_trip_with_clean_labels(tmp_path: Any) -> None:
    arrays = _valid_arrays((6, 4, 4, 3))
    arrays['y_train_clean'] = np.array([0, 1, 2, 0, 2, 2])
    data = npz_data.load(_save(tmp_path, arrays))
    np.testing.assert_array_equal(data.train.inputs.array, arrays['x_train'])
    np.testing.assert_array_equal(data.test.inputs.array, arrays['x_test'])
    np.testing.assert_array_equal(data.test.labels, arrays['y_test'])
    np.testing.assert_array_equal(data.train.clean_labels, arrays['y_train_clean'])
    assert data.num_classes == 3 and data.labels_given
    assert data.class_names == ('0', '1', '2')
    pixels = arrays['x_train'].reshape(-1, 3) / 255
    assert data.mean == pytest.approx(tuple(pixels.mean(0)))
    assert data.std == pytest.approx(tuple(pixels.std(0)))


@pytest.mark.parametrize('scale', [1.0, 255.0])
def test_npz_float_images_become_uint8(tmp_path: Any, scale: float) -> None:
    arrays = _valid_arrays()
    expected = arrays['x_train']
    arrays['x_train'] = (expected / 255.0 * scale).astype(np.float32)
    arrays['x_test'] = (arrays['x_test'] / 255.0 * scale).astype(np.float32)
    data = npz_data.load(_save(tmp_path, arrays))
    assert data.train.inputs.array.dtype == np.uint8
    np.testing.assert_array_equal(data.train.inputs.array, expected)


def test_npz_flat_features(tmp_path: Any) -> None:
    arrays = _valid_arrays()
    arrays['x_train'] = np.random.default_rng(1).normal(size=(6, 5)) * 10
    arrays['x_train'][:, 2] = 7.0  # constant feature: std falls back to 1.0
    arrays['x_test'] = np.ones((3, 5))
    data = npz_data.load(_save(tmp_path, arrays))
    assert data.train.inputs.array.dtype == np.float32 and data.train.inputs.array.shape == (6, 5)
    np.testing.assert_allclose(data.train.inputs.array, arrays['x_train'], rtol=1e-6)
    assert len(data.mean) == len(data.std) == 5
    assert data.mean == pytest.approx(tuple(arrays['x_train'].mean(0)))
    expected_std = arrays['x_train'].std(0)
    expected_std[2] = 1.0
    assert data.std == pytest.approx(tuple(expected_std))


def _with(**changes: Any) -> Callable[[str], None]:
    """Writes the valid arrays with `changes` (a None value drops the key) to the path."""
    def write(path: str) -> None:
        arrays = _valid_arrays()
        arrays.update(changes)
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return write


def _write_bytes(content: bytes) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, 'wb') as f:
            f.write(content)
    return write


def _write_npy(path: str) -> None:
    with open(path, 'wb') as f:
        np.save(f, np.zeros(3))


def _as_directory(path: str) -> None:
    os.mkdir(path)


def _no_file(path: str) -> None:
    del path


_NAN_X = np.full((6, 4, 4, 3), 0.5, np.float32)
_NAN_X[0, 0, 0, 0] = np.nan

_NPZ_ERRORS = [
        ('missing file', _no_file, 'no such file'),
        ('directory', _as_directory, 'not a file'),
        ('text file', _write_bytes(b'x_train,y_train\n1,2\n'), 'not an npz archive'),
        ('npy not npz', _write_npy, 'not an npz archive'),
        ('corrupt zip', _write_bytes(b'PK\x03\x04garbage'), 'unreadable npz archive'),
        ('pickled objects', _with(y_train=np.array([0, 1, 2, 0, 1, 'a'], dtype=object)),
         'y_train is a pickled object array'),
        ('missing keys', _with(y_train=None), 'missing arrays y_train'),
        ('half a pair', _with(y_test=None), 'x_test needs y_test beside it'),
        ('labels 1..K', _with(y_train=np.array([1, 2, 3, 1, 2, 3]), y_test=np.array([1, 2, 3])),
         'class 0 of the training labels has no samples'),
        ('class names too few', _with(class_names=np.array(['a', 'b'])),
         'y_train has label 2 but class_names names 2 classes'),
        ('class names not strings', _with(class_names=np.array([1, 2, 3])),
         'class_names must be a 1-D array of strings'),
        ('x 1-D', _with(x_train=np.zeros(6)), 'x_train must be [N, D], [N, H, W] or'),
        ('x 5-D', _with(x_test=np.zeros((3, 4, 4, 3, 1))), 'x_test must be [N, D]'),
        ('y 2-D', _with(y_train=np.zeros((6, 1), np.int64)), 'y_train must be 1-D'),
        ('bad channels', _with(x_train=np.zeros((6, 4, 4, 2), np.uint8),
                               x_test=np.zeros((3, 4, 4, 2), np.uint8)),
         'images need 1 or 3 channels, got 2'),
        ('shape differs', _with(x_test=np.zeros((3, 5, 4, 3), np.uint8)),
         'x_train rows have shape (4, 4, 3) but x_test rows have (5, 4, 3)'),
        ('flat vs image', _with(x_test=np.zeros((3, 48), np.uint8)), 'x_test rows have (48,)'),
        ('x/y length', _with(y_train=np.array([0, 1, 2, 0, 1])),
         'x_train has 6 rows but y_train has 5'),
        ('float labels', _with(y_test=np.array([0.5, 1.0, 2.0])), 'y_test has non-integer'),
        ('string labels', _with(y_test=np.array(['a', 'b', 'c'])), 'y_test has non-integer'),
        ('negative labels', _with(y_train=np.array([0, 1, 2, 0, 1, -1])),
         'y_train has negative labels'),
        ('clean shape', _with(y_train_clean=np.array([0, 1, 2])),
         'y_train_clean has shape (3,), y_train has (6,)'),
        ('NaN', _with(x_train=_NAN_X), 'x_train contains NaN or Inf'),
        ('Inf', _with(x_test=np.full((3, 4, 4, 3), np.inf)), 'x_test contains NaN or Inf'),
        ('string features', _with(x_test=np.full((3, 4, 4, 3), 'a')), 'x_test is not numeric'),
        ('pixels > 255', _with(x_test=np.full((3, 4, 4, 3), 300.0)),
         'image pixels must lie in [0, 1] or [0, 255]'),
        ('negative pixels', _with(x_test=np.full((3, 4, 4, 3), -1, np.int16)),
         'image pixels must lie in'),
        ('mixed pixel scales', _with(x_train=np.full((6, 4, 4, 3), 0.5, np.float32),
                                     x_test=np.full((3, 4, 4, 3), 200.0, np.float32)),
         'x_train is in [0, 1] but x_test in [0, 255]: save every split on one pixel scale'),
        ('a test label above the training labels', _with(y_test=np.array([0, 1, 7])),
         'y_test has label 7, above every training label (y_train uses 0..2)'),
        ('empty train', _with(x_train=np.zeros((0, 4, 4, 3), np.uint8),
                              y_train=np.zeros(0, np.int64)), 'the train split is empty'),
        ('empty test', _with(x_test=np.zeros((0, 4, 4, 3), np.uint8),
                             y_test=np.zeros(0, np.int64)), 'the test split is empty'),
        ('one class', _with(y_train=np.zeros(6, np.int64), y_test=np.zeros(3, np.int64)),
         'needs at least 2 classes'),
]


@pytest.mark.parametrize('write, fragment', [case[1:] for case in _NPZ_ERRORS],
                         ids=[case[0] for case in _NPZ_ERRORS])
def test_npz_errors(tmp_path: Any, write: Callable[[str], None], fragment: str) -> None:
    path = os.path.join(tmp_path, 'bad.npz')
    write(path)
    with pytest.raises(DataError) as err:
        sources.load('npz:' + path)
    checks.assert_one_line(err, f'npz file {path}: ', fragment)


def test_npz_without_path_is_data_error() -> None:
    with pytest.raises(DataError) as err:
        sources.load('npz:')
    checks.assert_one_line(err, "'npz:' needs an argument", 'npz:/data/mine.npz')


def test_npz_val_test_and_class_names_are_optional(tmp_path: Any) -> None:
    arrays = _valid_arrays()
    train_only = {k: arrays[k] for k in ('x_train', 'y_train')}
    data = npz_data.load(_save(tmp_path, train_only))
    assert data.test is None and data.val is None
    arrays['x_val'], arrays['y_val'] = arrays['x_test'], arrays['y_test']
    arrays['class_names'] = np.array(['cat', 'dog', 'emu'])
    data = npz_data.load(_save(tmp_path, arrays))
    np.testing.assert_array_equal(data.val.inputs.array, arrays['x_val'])
    assert data.class_names == ('cat', 'dog', 'emu')


def test_float_images_with_round_off_above_one_stay_on_the_unit_scale(tmp_path: Any) -> None:
    """[0, 1] images where one pixel is 1.0000001 (float round-off) are still read on the
    [0, 1] scale (0.5 -> 128, the pixel -> 255); a maximum that no scale explains (1.5) is
    refused in one line instead of guessed."""
    arrays = _valid_arrays()
    x = np.full((6, 4, 4, 3), 0.5, np.float32)
    x[0, 0, 0, 0] = 1.0000001
    arrays.update(x_train=x, x_test=np.full((3, 4, 4, 3), 0.25, np.float32))
    data = sources.load('npz:' + _save(tmp_path, arrays))
    assert data.train.inputs.array[1, 0, 0, 0] == 128 and data.train.inputs.array[0, 0, 0, 0] == 255
    assert data.test.inputs.array[0, 0, 0, 0] == 64
    x[0, 0, 0, 0] = 1.5
    arrays.update(x_train=x)
    with pytest.raises(DataError) as err:
        sources.load('npz:' + _save(tmp_path, arrays))
    checks.assert_one_line(err, 'x_train: float pixels reach 1.5', 'clip them to [0, 1]')


def test_huge_labels_and_declared_shapes_are_one_line_not_memory(tmp_path: Any) -> None:
    """A label of 10**12 would make 10**12 classes; one beyond int64 would overflow; an array
    header declaring terabytes would be allocated before reading. Each is refused at once."""
    for label in (10**12, 2**63 + 5):
        arrays = _valid_arrays()
        arrays['y_train'] = np.array([0, 1, 2, 0, 1, label], np.uint64)
        with pytest.raises(DataError) as err:
            sources.load('npz:' + _save(tmp_path, arrays))
        checks.assert_one_line(err, f'has the label {label}')
    path = _save(tmp_path, _valid_arrays())
    import io, zipfile  # pylint: disable=import-outside-toplevel,multiple-imports
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {'descr': '|u1', 'fortran_order': False, 'shape': (10**9, 10**6)})
    members['x_train.npy'] = header.getvalue() + members['x_train.npy'][128:]
    with zipfile.ZipFile(path, 'w') as target:
        for name, data in members.items():
            target.writestr(name, data)
    with pytest.raises(DataError) as err:
        sources.load('npz:' + path)
    checks.assert_one_line(err, 'x_train declares shape (1000000000, 1000000)',
                           'the file is damaged')
