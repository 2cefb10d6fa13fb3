"""Tests for clid_tf.data.datasets and clid_tf.data.sources.cifar: TFDS CIFAR(-N) under tfds mocks,
the fast offline failure, dispatch and the label checks every loader shares."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from clid_tf.data import datasets
from clid_tf.data import sources
from clid_tf.data.sources import cifar as tfds_cifar
from clid_tf.data.datasets import DataError
from tests.helpers import checks

_FAKE_N = 12
# Offsets the fake builder adds to the clean label to make each noisy field distinct, so a
# test can tell which TFDS feature a loader returned. Written out independently of
# datasets.HUMAN_LABELS on purpose.
_FIELD_OFFSET = {
        'aggre_label': 1, 'worse_label': 2, 'random_label1': 3,
        'random_label2': 4, 'random_label3': 5, 'noise_label': 6,
}


# --------------------------------------------------------------------------- TFDS


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked TFDS data is never 'prepared': pretend the download host is reachable."""
    monkeypatch.setattr(tfds_cifar, 'online', lambda: True)


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
        data = sources.load(name, human_label=human_label)
    for x in (data.train.inputs.array, data.test.inputs.array):
        assert x.shape == (9, 32, 32, 3) and x.dtype == np.uint8
    for y in (data.train.labels, data.train.clean_labels, data.test.labels):
        assert y.shape == (9,) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < num_classes
    assert data.num_classes == num_classes
    assert data.mean == mean and len(data.std) == 3
    if human_label is None:
        np.testing.assert_array_equal(data.train.labels, data.train.clean_labels)


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
    assert tfds_cifar.HUMAN_LABELS[human_label] == field
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset()):
        data = sources.load(name, human_label=human_label)
    k = data.num_classes
    clean = np.arange(_FAKE_N) % k
    np.testing.assert_array_equal(data.train.clean_labels, clean)
    np.testing.assert_array_equal(data.train.labels, (clean + _FIELD_OFFSET[field]) % k)
    np.testing.assert_array_equal(data.test.labels, clean)  # noisy fields are -1 on test


def test_fake_builder_mimics_tfds_minus_one_on_test() -> None:
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset()):
        test = next(iter(tfds.as_numpy(
                tfds.load('cifar10_n', split='test', batch_size=_FAKE_N))))
    for field in ('aggre_label', 'worse_label', 'random_label1'):
        assert (test[field] == -1).all()


def test_noisy_train_label_out_of_range_is_data_error() -> None:
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(noisy_train=-1)):
        with pytest.raises(DataError) as err:
            sources.load('cifar10_n', human_label='aggre')
    checks.assert_one_line(err, 'cifar10_n', 'aggre_label', 'outside [0, 10)')


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
        sources.load(name, human_label=human_label)
    checks.assert_one_line(err, fragment)


def test_unavailable_download_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_load(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError('Failed to resolve host\nwww.cs.toronto.edu')
    monkeypatch.setattr(tfds, 'load', failing_load)
    with pytest.raises(DataError) as err:
        sources.load('cifar10', data_dir='/nowhere/tfds')
    checks.assert_one_line(err, "'cifar10' is not available", 'ConnectionError',
                     'TFDS_DATA_DIR', '/nowhere/tfds')


def test_offline_fails_at_once_without_trying_to_download(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(tfds_cifar, 'online', lambda: False)
    monkeypatch.setattr(tfds, 'load', lambda *a, **k: pytest.fail('tried to download'))
    started = time.time()
    with pytest.raises(DataError) as err:
        sources.load('cifar10', data_dir='/nowhere/tfds')
    assert time.time() - started < 10
    checks.assert_one_line(err, "'cifar10' is not available (not prepared, and this machine is "
                     'offline)', 'download_and_prepare --datasets=cifar10', '/nowhere/tfds')


def test_online_reports_whether_the_download_host_answers() -> None:
    assert isinstance(tfds_cifar.online(), bool)  # no network here: False, in well under 4 s


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as err:
        sources.load('mnist')
    checks.assert_one_line(err, "'mnist'", ', '.join(sources.names()[:5]), 'npz:...',
                     'folder:...', 'list:...', 'tfds:...')


def test_digits_dispatch() -> None:
    data = sources.load('digits')
    assert data.train.inputs.element_shape == (8, 8, 1) and data.num_classes == 10
    assert len(data.train.labels) == 1437 and len(data.test.labels) == 360
    assert data.class_names == tuple('0123456789') and not data.labels_given
    np.testing.assert_array_equal(data.train.labels, data.train.clean_labels)


def test_class_names_come_from_the_tfds_info() -> None:
    # A prepared dataset's info names its classes; an unprepared (mocked) one gives '0'..'9'.
    with tfds.testing.mock_data(num_examples=4):
        names = sources.load('cifar10').class_names
    assert names == tuple(tfds.builder('cifar10').info.features['label'].names)
    assert len(names) == 10


@pytest.mark.parametrize('labels, k, fragment', [
        (np.array([1, 2, 3, 1]), 4, 'class 0 of the training labels has no samples: labels '
         'must run 0..3 (labels 1..K? subtract 1'),
        (np.array([0, 2, 0, 2]), 3, 'class 1 of the training labels has no samples'),
        (np.array([0, 1, 5]), 3, 'must lie in [0, 3), found [0, 5]'),
        (np.array([], np.int64), 3, 'are empty'),
])
def test_check_labels_refuses_empty_classes_and_out_of_range(labels, k, fragment) -> None:
    with pytest.raises(DataError) as err:
        datasets.check_labels(labels, k, what='training labels')
    checks.assert_one_line(err, fragment)


def test_image_size_only_for_file_and_tfds_data() -> None:
    with pytest.raises(DataError) as err:
        sources.load('digits', image_size=32)
    checks.assert_one_line(err, '--image_size applies to folder:, list: and tfds: data')
