"""Generic TFDS image classification: tiny builders prepared for real (array_record and
tfrecord, no download) and registered datasets under tfds.testing.mock_data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from clid_tf.data.sources import tfds as tfds_images
from clid_tf.errors import DataError
from clid_tf.data.inputs import ArrayInputs, read_numpy
from clid_tf.data.sources.tfds import TfdsInputs
from tests.helpers.checks import assert_one_line
from tests.helpers.flagfiles import write_tfds_metadata
from tests.helpers.images import pixels

_SPLIT_SEED = {'train': 0, 'validation': 1, 'test': 2}


def _colour_pixels(split: str, index: int) -> np.ndarray:
    """The image `index` of a split of ClidTinyColour: varying sizes, 3 channels."""
    return pixels(1000 * _SPLIT_SEED[split] + index, (5 + index % 4, 6 + index % 3, 3))


def _grey_pixels(split: str, index: int) -> np.ndarray:
    return pixels(1000 * _SPLIT_SEED[split] + index + 500, (6, 5, 1))


def _builder_class(class_name: str, *, features: dict[str, Any], splits: dict[str, int],
                   example, supervised_keys=None) -> type:
    """A GeneratorBasedBuilder (registered under snake_case(class_name)) of generated data."""
    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     supervised_keys=supervised_keys)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, n) for split, n in splits.items()}

    def _generate_examples(self, split, n):
        for i in range(n):
            yield f'{split}{i}', example(split, i)

    return type(class_name, (tfds.core.GeneratorBasedBuilder,), {
            'VERSION': tfds.core.Version('1.0.0'), '_info': _info,
            '_split_generators': _split_generators, '_generate_examples': _generate_examples})


ClidTinyColour = _builder_class(
        'ClidTinyColour',
        features={'image': tfds.features.Image(shape=(None, None, 3)),
                  'label': tfds.features.ClassLabel(names=['cat', 'dog', 'emu']),
                  'index': tf.int64},
        splits={'train': 10, 'validation': 4, 'test': 5},
        example=lambda split, i: {'image': _colour_pixels(split, i), 'label': i % 3, 'index': i})
ClidTinyGrey = _builder_class(  # other feature names, found through the supervised keys
        'ClidTinyGrey',
        features={'picture': tfds.features.Image(shape=(6, 5, 1)),
                  'kind': tfds.features.ClassLabel(names=['no', 'yes']), 'index': tf.int64},
        splits={'train': 7, 'test': 3},
        example=lambda split, i: {'picture': _grey_pixels(split, i), 'kind': i % 2, 'index': i},
        supervised_keys=('picture', 'kind'))
ClidTinyCaptions = _builder_class(
        'ClidTinyCaptions',
        features={'image': tfds.features.Image(shape=(4, 4, 3)), 'caption': tfds.features.Text()},
        splits={'train': 2},
        example=lambda split, i: {'image': pixels(i, (4, 4, 3)), 'caption': f'picture {i}'})


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> dict[str, str]:
    """Data dirs with the tiny builders prepared: {'array_record': DIR, 'tfrecord': DIR}."""
    dirs = {}
    for file_format in ('array_record', 'tfrecord'):
        data_dir = str(tmp_path_factory.mktemp(file_format))
        for builder_class in (ClidTinyColour, ClidTinyGrey, ClidTinyCaptions):
            builder_class(data_dir=data_dir, file_format=file_format).download_and_prepare()
        dirs[file_format] = data_dir
    return dirs


def _indices(name: str, split: str, data_dir: str) -> np.ndarray:
    """The generator index of each array_record record, read by TFDS' own numpy decoder."""
    records = tfds.data_source(name, split=split, data_dir=data_dir)
    return np.array([int(records[j]['index']) for j in range(len(records))])


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    resized = tf.image.resize(image, (size, size), antialias=True).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- prepared data

def test_array_record_splits_stream_by_index(prepared):
    data = tfds_images.load_tfds_image_classification(
            'clid_tiny_colour', data_dir=prepared['array_record'], image_size=8)
    assert list(data.splits) == ['train', 'val', 'test']
    assert data.class_names == ('cat', 'dog', 'emu')
    assert len(data.notes) == 1 and 'array_record' in data.notes[0]
    for split, tfds_split in (('train', 'train'), ('val', 'validation'), ('test', 'test')):
        source, labels = data.splits[split]
        assert isinstance(source, TfdsInputs) and source.element_shape == (8, 8, 3)
        index = _indices('clid_tiny_colour', tfds_split, prepared['array_record'])
        assert len(source) == len(index) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, index % 3)
        order = np.random.default_rng(0).permutation(len(index))
        expected = np.stack([_resized(_colour_pixels(tfds_split, index[j]), 8) for j in order])
        np.testing.assert_array_equal(read_numpy(source, order, batch_size=3), expected)


def test_tfrecord_splits_are_read_into_memory_alike(prepared):
    streamed = tfds_images.load_tfds_image_classification(
            'clid_tiny_colour', data_dir=prepared['array_record'], image_size=8)
    held = tfds_images.load_tfds_image_classification(
            'clid_tiny_colour', data_dir=prepared['tfrecord'], image_size=8)
    assert list(held.splits) == ['train', 'val', 'test']
    for split in held.splits:
        source, labels = held.splits[split]
        assert isinstance(source, ArrayInputs) and source.array.shape[1:] == (8, 8, 3)
        np.testing.assert_array_equal(labels, streamed.splits[split].labels)
        np.testing.assert_array_equal(
                source.array, read_numpy(streamed.splits[split].inputs, range(len(source))))
    assert len(held.notes) == 3 and all('\n' not in note for note in held.notes)
    assert "'clid_tiny_colour' (train): tfrecord files have no random access" in held.notes[0]
    assert 'held in memory' in held.notes[0] and '--file_format=array_record' in held.notes[0]


def test_supervised_keys_fixed_size_grey_and_static_batches(prepared):
    data = tfds_images.load_tfds_image_classification('clid_tiny_grey',
                                                      data_dir=prepared['array_record'])
    assert list(data.splits) == ['train', 'test'] and data.class_names == ('no', 'yes')
    source, labels = data.splits['train']
    assert source.element_shape == (6, 5, 1) and source.names() is None
    index = _indices('clid_tiny_grey', 'train', prepared['array_record'])
    np.testing.assert_array_equal(labels, index % 2)
    order = np.array([6, 0, 5, 1, 4, 2, 3])
    ids = tf.data.Dataset.from_tensor_slices(order)
    batches = source.read(ids, batch_size=3, drop_remainder=True)
    assert batches.element_spec[1].shape == (3, 6, 5, 1)
    got = list(batches.as_numpy_iterator())
    assert [list(i) for i, _ in got] == [[6, 0, 5], [1, 4, 2]]
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]),
                                  np.stack([_grey_pixels('train', index[j]) for j in order[:6]]))


def test_feature_and_size_errors(prepared):
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification('clid_tiny_captions',
                                                   data_dir=prepared['tfrecord'])
    assert_one_line(err, "'clid_tiny_captions' has no ClassLabel feature 'label'",
                    'caption (Text), image (Image)')
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification('clid_tiny_colour',
                                                   data_dir=prepared['array_record'])
    assert_one_line(err, 'images of varying size (shape (None, None, 3))', '--image_size=S')
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification('clid_tiny_grey', image_size=0,
                                                   data_dir=prepared['tfrecord'])
    assert_one_line(err, 'image_size must be a positive')


def test_tfrecord_split_too_large_for_memory_is_an_error(prepared, monkeypatch):
    monkeypatch.setattr(tfds_images, '_physical_memory', lambda: 300)  # bytes
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification('clid_tiny_grey',
                                                   data_dir=prepared['tfrecord'])
    assert_one_line(err, "'clid_tiny_grey' (train) is in tfrecord files", '7 images of 6x5x1',
                    'tfds build clid_tiny_grey --file_format=array_record')


def test_a_dataset_prepared_elsewhere_needs_no_builder_code(tmp_path):
    with tfds.core.registered.skip_registration():  # like a user's own builder, not installed
        builder_class = _builder_class(
                'ClidUnregistered',
                features={'image': tfds.features.Image(shape=(4, 4, 3)),
                          'label': tfds.features.ClassLabel(names=['a', 'b'])},
                splits={'train': 4, 'test': 2},
                example=lambda split, i: {'image': np.full((4, 4, 3), i, np.uint8),
                                          'label': i % 2})
    builder_class(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    data = tfds_images.load_tfds_image_classification('clid_unregistered',
                                                      data_dir=str(tmp_path))
    assert data.class_names == ('a', 'b') and list(data.splits) == ['train', 'test']
    source, labels = data.splits['train']
    images = read_numpy(source, range(4))
    np.testing.assert_array_equal(labels, images[:, 0, 0, 0] % 2)  # pixel value i, label i % 2
    assert sorted(images[:, 0, 0, 0]) == [0, 1, 2, 3]


def test_unprepared_and_unknown_datasets_fail_at_once(tmp_path):
    for name in ('clid_tiny_colour', 'mnist'):  # mnist: a real dataset, no download tried
        with pytest.raises(DataError) as err:
            tfds_images.load_tfds_image_classification(name, data_dir=str(tmp_path))
        assert_one_line(err, f'{name!r} is not prepared in {tmp_path}', 'no download is tried',
                        f'tfds build {name}', 'TFDS_DATA_DIR')
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification('no_such_images', data_dir=str(tmp_path))
    assert_one_line(err, "unknown TFDS dataset 'no_such_images'", str(tmp_path))


# --------------------------------------------------------------------------- mock_data

def test_mocked_registered_datasets(tmp_path):
    data_dir = str(tmp_path)
    write_tfds_metadata('mnist', data_dir, {'train': 60000, 'test': 10000})
    write_tfds_metadata('tf_flowers', data_dir, {'train': 3670})
    with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
        mnist = tfds_images.load_tfds_image_classification('mnist')
        with pytest.raises(DataError) as err:
            tfds_images.load_tfds_image_classification('tf_flowers')
        flowers = tfds_images.load_tfds_image_classification('tf_flowers', image_size=16)
    assert list(mnist.splits) == ['train', 'test']
    assert mnist.class_names == tuple(str(k) for k in range(10))
    for source, labels in mnist.splits.values():
        assert source.array.shape == (6, 28, 28, 1) and source.dtype == 'uint8'
        assert labels.shape == (6,) and labels.min() >= 0 and labels.max() < 10
    assert_one_line(err, "'tf_flowers' has images of varying size", '--image_size')
    assert list(flowers.splits) == ['train']  # TFDS has no val/test split for it
    assert flowers.class_names[0] == 'dandelion' and len(flowers.class_names) == 5
    assert flowers.splits['train'].inputs.array.shape == (6, 16, 16, 3)


def test_mocked_labels_out_of_range(tmp_path):
    write_tfds_metadata('mnist', str(tmp_path), {'train': 60000, 'test': 10000})

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        image = tf.io.encode_png(np.zeros((28, 28, 1), np.uint8))
        return tf.data.Dataset.from_tensor_slices(
                {'image': tf.stack([image] * 3), 'label': np.array([0, 12, 3], np.int64)})
    with tfds.testing.mock_data(data_dir=str(tmp_path), as_dataset_fn=as_dataset):
        with pytest.raises(DataError) as err:
            tfds_images.load_tfds_image_classification('mnist')
    assert_one_line(err, "'mnist' (train): 'label' has values outside [0, 10)", 'max 12')


def test_no_train_split(tmp_path):
    write_tfds_metadata('mnist', str(tmp_path), {'test': 10000})
    with tfds.testing.mock_data(data_dir=str(tmp_path)):
        with pytest.raises(DataError) as err:
            tfds_images.load_tfds_image_classification('mnist')
    assert_one_line(err, "'mnist' has no train split (splits: test)")
