"""Tests for clid_tf.datasets: TFDS CIFAR(-N) under tfds mocks, npz loading, dispatch."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from clid_tf import datasets
from clid_tf.datasets import DataError

_FAKE_N = 12
# Offsets the fake builder adds to the clean label to make each noisy field distinct, so a
# test can tell which TFDS feature a loader returned. Written out independently of
# datasets.HUMAN_LABELS on purpose.
_FIELD_OFFSET = {
        'aggre_label': 1, 'worse_label': 2, 'random_label1': 3,
        'random_label2': 4, 'random_label3': 5, 'noise_label': 6,
}


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    """The DataError message is one non-empty line containing every fragment."""
    message = str(err.value)
    assert message and '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------- TFDS

def _fake_as_dataset(*, noisy_train: int | None = None) -> Callable[..., tf.data.Dataset]:
    """A `mock_data(as_dataset_fn=...)` builder: clean 'label' = i % K, like real CIFAR-N.

    Noisy fields are -1 on the test split (as in TFDS) and (label + offset) % K on train,
    or the constant `noisy_train` when given.
    """
    def as_dataset(self: Any, split: Any, **kwargs: Any) -> tf.data.Dataset:
        del kwargs
        num_classes = self.info.features['label'].num_classes
        label = np.arange(_FAKE_N, dtype=np.int64) % num_classes
        rng = np.random.default_rng(0)
        example = {
                'image': rng.integers(0, 256, (_FAKE_N, 32, 32, 3), dtype=np.uint8),
                'label': label,
        }
        for field, offset in _FIELD_OFFSET.items():
            if field not in self.info.features:
                continue
            if 'test' in str(split):
                example[field] = np.full(_FAKE_N, -1, np.int64)
            elif noisy_train is not None:
                example[field] = np.full(_FAKE_N, noisy_train, np.int64)
            else:
                example[field] = (label + offset) % num_classes
        return tf.data.Dataset.from_tensor_slices(example)
    return as_dataset


@pytest.mark.parametrize('name, human_label, num_classes, mean', [
        ('cifar10', None, 10, (0.4914, 0.4822, 0.4465)),
        ('cifar100', None, 100, (0.507, 0.487, 0.441)),
        ('cifar10_n', 'worst', 10, (0.4914, 0.4822, 0.4465)),
        ('cifar100_n', 'noisy100', 100, (0.507, 0.487, 0.441)),
])
def test_load_tfds_mocked(name: str, human_label: str | None, num_classes: int,
                          mean: tuple[float, ...]) -> None:
    with tfds.testing.mock_data(num_examples=9):
        data = datasets.load(name, human_label=human_label)
    for x in (data.x_train, data.x_test):
        assert x.shape == (9, 32, 32, 3) and x.dtype == np.uint8
    for y in (data.y_train, data.y_train_clean, data.y_test):
        assert y.shape == (9,) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < num_classes
    assert data.num_classes == num_classes
    assert data.mean == mean and len(data.std) == 3
    if human_label is None:
        np.testing.assert_array_equal(data.y_train, data.y_train_clean)


@pytest.mark.parametrize('name, human_label, field', [
        ('cifar10_n', 'aggre', 'aggre_label'),
        ('cifar10_n', 'worst', 'worse_label'),
        ('cifar10_n', 'rand1', 'random_label1'),
        ('cifar10_n', 'rand2', 'random_label2'),
        ('cifar10_n', 'rand3', 'random_label3'),
        ('cifar100_n', 'noisy100', 'noise_label'),
])
def test_human_label_picks_field_and_test_uses_clean(name: str, human_label: str,
                                                     field: str) -> None:
    assert datasets.HUMAN_LABELS[human_label] == field
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset()):
        data = datasets.load(name, human_label=human_label)
    k = data.num_classes
    clean = np.arange(_FAKE_N) % k
    np.testing.assert_array_equal(data.y_train_clean, clean)
    np.testing.assert_array_equal(data.y_train, (clean + _FIELD_OFFSET[field]) % k)
    np.testing.assert_array_equal(data.y_test, clean)  # noisy fields are -1 on test


def test_fake_builder_mimics_tfds_minus_one_on_test() -> None:
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset()):
        test = next(iter(tfds.as_numpy(
                tfds.load('cifar10_n', split='test', batch_size=_FAKE_N))))
    for field in ('aggre_label', 'worse_label', 'random_label1'):
        assert (test[field] == -1).all()


def test_noisy_train_label_out_of_range_is_data_error() -> None:
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(noisy_train=-1)):
        with pytest.raises(DataError) as err:
            datasets.load('cifar10_n', human_label='aggre')
    _assert_one_line(err, 'cifar10_n', 'aggre_label', 'outside [0, 10)')


@pytest.mark.parametrize('name, human_label, fragment', [
        ('cifar10', 'aggre', 'has no human noisy labels'),
        ('cifar100', 'noisy100', 'has no human noisy labels'),
        ('digits', 'worst', 'has no human noisy labels'),
        ('cifar10_n', None, 'needs a human_label'),
        ('cifar100_n', None, 'needs a human_label'),
        ('cifar10_n', 'noisy100', "no human_label 'noisy100'"),
        ('cifar100_n', 'aggre', "no human_label 'aggre'"),
        ('cifar10_n', 'bogus', 'valid: aggre, worst, rand1, rand2, rand3'),
])
def test_human_label_errors(name: str, human_label: str | None, fragment: str) -> None:
    with pytest.raises(DataError) as err:  # raised before any TFDS access
        datasets.load(name, human_label=human_label)
    _assert_one_line(err, fragment)


def test_unavailable_offline_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_load(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError('Failed to resolve host\nwww.cs.toronto.edu')
    monkeypatch.setattr(tfds, 'load', failing_load)
    with pytest.raises(DataError) as err:
        datasets.load('cifar10', data_dir='/nowhere/tfds')
    _assert_one_line(err, "'cifar10' is not available offline", 'ConnectionError',
                     'TFDS_DATA_DIR', '/nowhere/tfds')


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as err:
        datasets.load('mnist')
    _assert_one_line(err, "'mnist'", ', '.join(datasets.NAMES), 'npz:PATH')


def test_digits_dispatch() -> None:
    data = datasets.load('digits')
    assert data.x_train.shape[1:] == (8, 8, 1) and data.num_classes == 10


# --------------------------------------------------------------------------- npz

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
    data = datasets.load('npz:' + _save(tmp_path, arrays))
    assert data.x_train.shape == (6, 5, 7, 1) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (3, 5, 7, 1)
    np.testing.assert_array_equal(data.x_train[..., 0], arrays['x_train'])
    np.testing.assert_array_equal(data.y_train, arrays['y_train'])
    assert data.y_train.dtype == np.int64 and data.y_train_clean is None
    assert data.num_classes == 3
    assert data.mean == pytest.approx((arrays['x_train'].mean() / 255,))
    assert data.std == pytest.approx((arrays['x_train'].std() / 255,))


def test_npz_images_hwc_round_trip_with_clean_labels(tmp_path: Any) -> None:
    arrays = _valid_arrays((6, 4, 4, 3))
    arrays['y_train_clean'] = np.array([0, 1, 2, 0, 1, 3])
    data = datasets.load_npz(_save(tmp_path, arrays))
    np.testing.assert_array_equal(data.x_train, arrays['x_train'])
    np.testing.assert_array_equal(data.x_test, arrays['x_test'])
    np.testing.assert_array_equal(data.y_test, arrays['y_test'])
    np.testing.assert_array_equal(data.y_train_clean, arrays['y_train_clean'])
    assert data.num_classes == 4  # max over all label arrays + 1
    pixels = arrays['x_train'].reshape(-1, 3) / 255
    assert data.mean == pytest.approx(tuple(pixels.mean(0)))
    assert data.std == pytest.approx(tuple(pixels.std(0)))


@pytest.mark.parametrize('scale', [1.0, 255.0])
def test_npz_float_images_become_uint8(tmp_path: Any, scale: float) -> None:
    arrays = _valid_arrays()
    expected = arrays['x_train']
    arrays['x_train'] = (expected / 255.0 * scale).astype(np.float32)
    arrays['x_test'] = (arrays['x_test'] / 255.0 * scale).astype(np.float32)
    data = datasets.load_npz(_save(tmp_path, arrays))
    assert data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train, expected)


def test_npz_flat_features(tmp_path: Any) -> None:
    arrays = _valid_arrays()
    arrays['x_train'] = np.random.default_rng(1).normal(size=(6, 5)) * 10
    arrays['x_train'][:, 2] = 7.0  # constant feature: std falls back to 1.0
    arrays['x_test'] = np.ones((3, 5))
    data = datasets.load_npz(_save(tmp_path, arrays))
    assert data.x_train.dtype == np.float32 and data.x_train.shape == (6, 5)
    np.testing.assert_allclose(data.x_train, arrays['x_train'], rtol=1e-6)
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
        ('missing keys', _with(x_test=None, y_test=None), 'missing arrays x_test, y_test'),
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
        datasets.load('npz:' + path)
    _assert_one_line(err, f'npz file {path}: ', fragment)


def test_npz_without_path_is_data_error() -> None:
    with pytest.raises(DataError) as err:
        datasets.load('npz:')
    _assert_one_line(err, 'needs a file path')
