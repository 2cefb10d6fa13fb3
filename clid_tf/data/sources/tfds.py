"""Any prepared TFDS image classification dataset as Sources: `--dataset=tfds:NAME`.

The dataset must have an Image feature and a ClassLabel feature: its supervised keys when
they are such a pair, else the features named 'image' and 'label'. Its 'train',
'validation' and 'test' splits (where present) become train, val and test; the class names
are the ClassLabel's names.

How a split is read depends on the files TFDS prepared (tensorflow_datasets 4.9):

  array_record  random access (`builder.as_data_source`): a `TfdsInputs` reads the
                serialized examples of each batch of indices in one call, then tf.data
                parses, decodes and resizes them in parallel map calls; nothing is held in
                memory. One pass over the records reads the labels up front.
  tfrecord      (the TFDS default) sequential files without random access: the split is
                read once, decoded and resized to uint8, and held in memory (an
                ArrayInputs), with a note naming its size. A split that would take more than
                half the machine's memory is an error that says how to convert the dataset
                to array_record.

Images are decoded like image files (clid_tf.data.inputs.decode_image): C = 1 for a
one-channel Image feature, else 3; with image_size they are resized to (S, S).

A dataset that is not prepared in the data directory fails at once with one line (no
download attempt): prepare it on a machine with internet and copy it over. TensorFlow and
tensorflow_datasets are imported inside the functions.

What a data folder is trusted with: its files are read as data. TFDS itself would import
the Python module that a feature type in a prepared folder's features.json or
dataset_info.json names (its way of finding custom feature classes), so a folder prepared
by someone else could run code; before TFDS opens the folder, every feature type it names
is checked against TFDS's own feature classes, and any other is refused in one line.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from clid_tf.data import datasets
from clid_tf.errors import DataError
from clid_tf.data import inputs as inputs_lib
from clid_tf.data.inputs import ArrayInputs, Inputs, decode_image

# TFDS split name -> ours.
SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}
MAX_MEMORY_FRACTION = 0.5  # of physical memory, for one split read into memory
_READ_BATCH = 1024  # examples per read while reading labels or a whole split


class TfdsSplit(NamedTuple):
    """One split: its images (`Inputs`) and their labels.

    Attributes:
      inputs: uint8 images [N, *element_shape] (a TfdsInputs or an ArrayInputs).
      labels: int64 [N] in [0, len(class_names)).
    """
    inputs: Inputs
    labels: np.ndarray


class TfdsImages(NamedTuple):
    """A TFDS image classification dataset.

    Attributes:
      splits: {'train': TfdsSplit, and 'val' / 'test' where the dataset has them}.
      class_names: K names; index = label.
      notes: one-line messages for the log (how each split is read).
    """
    splits: dict[str, TfdsSplit]
    class_names: tuple[str, ...]
    notes: list[str]


def load_tfds_image_classification(name: str, *, data_dir: str | None = None,
                                   image_size: int | None = None) -> TfdsImages:
    """The prepared TFDS dataset `name` (e.g. 'tf_flowers', 'food101', 'mnist:3.*.*').

    Args:
      name: a TFDS name as tfds.builder takes it (with optional /config and :version): a
        dataset of tensorflow_datasets, or any dataset prepared (elsewhere) in data_dir.
      data_dir: TFDS data directory; None uses $TFDS_DATA_DIR or ~/tensorflow_datasets.
      image_size: S to resize every image to S x S; needed when the dataset's images have
        no fixed size.

    Returns:
      TfdsImages; every split's inputs have element_shape (H, W, C), dtype 'uint8'.

    Raises:
      DataError (one line): unknown or unprepared dataset, no image/label features, no
        train split, images of varying size without image_size, labels out of range, or a
        tfrecord split too large for memory.
    """
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if image_size is not None and image_size < 1:
        raise DataError(f'image_size must be a positive number of pixels, got {image_size}')
    builder = _prepared_builder(name, data_dir)
    info = builder.info
    image_key, label_key = _feature_keys(name, info)
    class_names = tuple(info.features[label_key].names)
    shape = _element_shape(name, info.features[image_key], image_size)
    split_names = [s for s in SPLITS if s in info.splits]
    if 'train' not in split_names:
        raise DataError(f'TFDS dataset {name!r} has no train split '
                        f'(splits: {", ".join(info.splits) or "none"})')
    random_access = tfds.core.FileFormat.ARRAY_RECORD in info.available_file_formats()
    splits, notes = {}, []
    for split in split_names:
        if random_access:
            records = builder.as_data_source(
                    split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
            source = TfdsInputs(records, info.features, image_key=image_key,
                                element_shape=shape, image_size=image_size,
                                files=_shard_files(info, split))
            labels = source.read_labels(label_key)
        else:
            source, labels = _read_into_memory(builder, name, split, image_key, label_key,
                                               shape, image_size)
            notes.append(_memory_note(builder, name, split, source))
        _check_labels(name, split, label_key, labels, len(class_names))
        splits[SPLITS[split]] = TfdsSplit(source, labels)
    if random_access:
        notes.append(f'TFDS dataset {name!r}: array_record files, read by index while training')
    return TfdsImages(splits=splits, class_names=class_names, notes=notes)


class TfdsInputs:
    """A TFDS split in array_record files, read by index (implements `Source`).

    `read` fetches the serialized tf.Examples of each batch of indices with one Python call
    (the array_record reader reads them in parallel), then parses, decodes and resizes each
    in parallel tf.data map calls.

    Args:
      records: `builder.as_data_source(split=..., deserialize_method=RAW_BYTES)`: a
        sequence of serialized examples supporting __getitems__.
      features: the dataset's FeaturesDict (info.features).
      image_key: the Image feature's name.
      element_shape: (H, W, C) of the decoded (and resized) images.
      image_size: S to resize to, or None.
    """

    def __init__(self, records: Any, features: Any, *, image_key: str,
                 element_shape: Sequence[int], image_size: int | None,
                 files: Sequence[str] = ()):
        self.records = records
        self.files = list(files)  # the split's shard files (the fingerprint)
        self.features = features
        self.image_key = image_key
        self.element_shape = tuple(int(d) for d in element_shape)
        self.image_size = image_size
        self.dtype = 'uint8'

    def __len__(self) -> int:
        return len(self.records)

    def names(self) -> None:
        return None

    def fingerprint(self) -> str:
        return inputs_lib.files_fingerprint(
            self.files, [os.path.basename(f) for f in self.files],
            extra=(len(self), self.element_shape, self.image_size))

    def _fetch(self, ids: np.ndarray) -> np.ndarray:
        """object [b] serialized examples at the int64 [b] indices."""
        return np.array(self.records.__getitems__(ids.tolist()), dtype=object).reshape(-1)

    def _serialized(self, ids_dataset):
        """(ids [b], serialized string [b]) batches from a dataset of int64 [b] batches."""
        # deferred: TensorFlow is imported only for TFDS data
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        def fetch(ids):
            serialized = tf.numpy_function(self._fetch, [ids], tf.string, stateful=False)
            return ids, tf.ensure_shape(serialized, ids.shape)
        # One fetch at a time: the reader parallelises inside and may not be thread-safe.
        return ids_dataset.map(fetch).prefetch(1)

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        # deferred: TensorFlow and TFDS are imported only for TFDS data
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        decoders = {self.image_key: tfds.decode.SkipDecoding()}
        features, key = self.features, self.image_key
        shape, size = self.element_shape, self.image_size

        def decode(i, serialized):
            encoded = features.deserialize_example(serialized, decoders=decoders)[key]
            return i, decode_image(encoded, element_shape=shape, image_size=size)

        batches = self._serialized(indices.batch(batch_size, drop_remainder=drop_remainder))
        # Re-batching the unbatched batches gives the same batches (the remainder is settled).
        return batches.unbatch().map(
                decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
                batch_size, drop_remainder=drop_remainder)

    def read_labels(self, label_key: str) -> np.ndarray:
        """int64 [N]: the ClassLabel feature `label_key` of every record (one pass)."""
        # deferred: TensorFlow is imported only for TFDS data
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        spec = {label_key: tf.io.FixedLenFeature([], tf.int64)}
        ids = tf.data.Dataset.range(len(self)).batch(_READ_BATCH)
        batches = self._serialized(ids).map(
                lambda _, serialized: tf.io.parse_example(serialized, spec)[label_key],
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        parts = list(batches.as_numpy_iterator())
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- helpers

# The keys under which TFDS's metadata files name feature classes (features.json: 'type';
# dataset_info.json, a proto in JSON: 'pythonClassName').
_FEATURE_TYPE_KEYS = {'features.json': ('type',),
                      'dataset_info.json': ('pythonClassName', 'python_class_name')}
_METADATA_DEPTH = 4  # <data_dir>/<name>/<config>/<version>/<file>


def check_feature_types(name: str, data_dir: str | None) -> None:
    """DataError (one line) when a metadata file of the dataset's folder in the data
    directory names a feature type that is not one of TFDS's own classes: TFDS would import
    the module it names, and so run code the folder chose. Links are not followed."""
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    trusted = {n for n in tfds.features.FeatureConnector._registered_features  # pylint: disable=protected-access
               if n.startswith('tensorflow_datasets.')}
    base = name.split(':', 1)[0].split('/', 1)[0]
    root = os.path.join(datasets.tfds_location(data_dir), base)
    for folder, names, files in os.walk(root):
        if folder[len(root):].count(os.sep) >= _METADATA_DEPTH:
            names[:] = []
        for file in files:
            keys = _FEATURE_TYPE_KEYS.get(file)
            path = os.path.join(folder, file)
            if keys is None or os.path.islink(path):
                continue
            for found in _values_of(_read_json(path), keys):
                if found not in trusted:
                    raise DataError(
                            f'TFDS data folder {folder} names the feature type {found!r} in '
                            f'{file}, which is not one of tensorflow_datasets\' own; TFDS would '
                            'import its module (run its code), so the folder is refused: '
                            'prepare the dataset with TFDS\'s feature types, or use it '
                            'from a folder you trust with its code')


def _read_json(path: str):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f'TFDS metadata file {path} is unreadable ({type(err).__name__})') from err


def _values_of(tree, keys: tuple[str, ...]):
    """Every value under one of `keys` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in keys:
                yield value
            yield from _values_of(value, keys)
    elif isinstance(tree, list):
        for value in tree:
            yield from _values_of(value, keys)


def _prepared_builder(name: str, data_dir: str | None):
    """tfds.builder(name) when it is prepared in data_dir; else a DataError (no download).
    The folder's feature types are checked first (`check_feature_types`)."""
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    where = datasets.tfds_location(data_dir)
    check_feature_types(name, data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataError(f'unknown TFDS dataset {name!r}: tensorflow_datasets '
                        f'{tfds.__version__} has no such dataset and none is prepared in '
                        f'{where}') from err
    except Exception as err:  # bad config or version, unreadable metadata, ...
        detail = ' '.join(str(err).split())[:300]
        raise DataError(f'TFDS dataset {name!r}: {type(err).__name__}: {detail}') from err
    if not builder.is_prepared():
        raise DataError(
                f'TFDS dataset {name!r} is not prepared in {where} (nothing at '
                f'{builder.data_dir}; no download is tried); '
                f'prepare it on a machine with internet, e.g. `tfds build {name} '
                '--file_format=array_record` (array_record streams; tfrecord is read into '
                f'memory), then copy its folder into data_dir or $TFDS_DATA_DIR')
    return builder


def _feature_keys(name: str, info: Any) -> tuple[str, str]:
    """(image feature, label feature): the supervised keys when they are an Image and a
    ClassLabel feature, else 'image' and 'label'."""
    # deferred: TFDS (it loads TensorFlow) is imported only for TFDS data
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    features = dict(info.features.items())
    image_key, label_key = 'image', 'label'
    supervised = info.supervised_keys
    if (isinstance(supervised, tuple) and len(supervised) == 2
            and all(isinstance(k, str) for k in supervised)
            and isinstance(features.get(supervised[0]), tfds.features.Image)
            and isinstance(features.get(supervised[1]), tfds.features.ClassLabel)):
        image_key, label_key = supervised
    found = ', '.join(f'{k} ({type(f).__name__})' for k, f in sorted(features.items()))
    if not isinstance(features.get(image_key), tfds.features.Image):
        raise DataError(f'TFDS dataset {name!r} has no Image feature {image_key!r}, so it is '
                        f'not an image classification dataset (features: {found})')
    if not isinstance(features.get(label_key), tfds.features.ClassLabel):
        raise DataError(f'TFDS dataset {name!r} has no ClassLabel feature {label_key!r}, so '
                        f'it is not an image classification dataset (features: {found})')
    return image_key, label_key


def _element_shape(name: str, image: Any, image_size: int | None) -> tuple[int, int, int]:
    """(H, W, C) of the decoded images: C = 1 for one-channel images, else 3."""
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f'TFDS dataset {name!r}: images are {np.dtype(image.np_dtype)}, '
                        'only uint8 images are supported')
    height, width, channels = image.shape
    channels = 1 if channels == 1 else 3
    if image_size is not None:
        return image_size, image_size, channels
    if height is None or width is None:
        raise DataError(f'TFDS dataset {name!r} has images of varying size (shape '
                        f'{image.shape}); pass --image_size=S to resize every image to S x S')
    return height, width, channels


def _read_into_memory(builder: Any, name: str, split: str, image_key: str, label_key: str,
                      shape: tuple[int, int, int], image_size: int | None,
                      ) -> tuple[ArrayInputs, np.ndarray]:
    """A split without random access, decoded (and resized) into uint8 [N, H, W, C]."""
    # deferred: TensorFlow and TFDS are imported only for TFDS data
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    num_examples = builder.info.splits[split].num_examples
    needed = num_examples * int(np.prod(shape))
    available = _physical_memory()
    if available and needed > MAX_MEMORY_FRACTION * available:
        raise DataError(
                f'TFDS dataset {name!r} ({split}) is in tfrecord files, which have no random '
                f'access, and its {num_examples} images of {_shape_text(shape)} take '
                f'{needed / 2**30:.1f} GiB, more than half of this machine\'s '
                f'{available / 2**30:.1f} GiB; to stream it, {_array_record_advice(builder, name)}')
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})

    def decode(example):
        return (decode_image(example[image_key], element_shape=shape, image_size=image_size),
                example[label_key])
    batches = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
            _READ_BATCH).prefetch(1)
    images, labels = [], []
    try:
        for x, y in batches.as_numpy_iterator():
            images.append(x)
            labels.append(y)
    except tf.errors.InvalidArgumentError as err:  # an image of another size, undecodable
        detail = ' '.join(err.message.split())[:200]
        raise DataError(f'TFDS dataset {name!r} ({split}): cannot decode an image to '
                        f'{_shape_text(shape)} ({detail}); pass --image_size=S to resize') from err
    if not images:
        return ArrayInputs(np.zeros((0, *shape), np.uint8)), np.zeros(0, np.int64)
    return ArrayInputs(np.concatenate(images)), np.concatenate(labels).astype(np.int64)


def _memory_note(builder: Any, name: str, split: str, source: ArrayInputs) -> str:
    return (f'TFDS dataset {name!r} ({split}): tfrecord files have no random access, so its '
            f'{len(source)} images are held in memory ({source.array.nbytes / 2**20:.1f} MiB); '
            f'to stream them, {_array_record_advice(builder, name)}')


def _array_record_advice(builder: Any, name: str) -> str:
    return (f'prepare the dataset as array_record (tfds build {name} '
            '--file_format=array_record) or convert these files (tfds convert_format '
            f'--dataset_version_dir={builder.data_dir} --out_file_format=array_record; needs '
            'apache-beam)')


def _check_labels(name: str, split: str, label_key: str, labels: np.ndarray,
                  num_classes: int) -> None:
    if not labels.size:
        raise DataError(f'TFDS dataset {name!r}: the {split} split is empty')
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f'TFDS dataset {name!r} ({split}): {label_key!r} has values outside '
                        f'[0, {num_classes}) (min {labels.min()}, max {labels.max()})')


def _physical_memory() -> int | None:
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
        return None


def _shape_text(shape: Sequence[int]) -> str:
    return 'x'.join(str(d) for d in shape)


def load(name: str, *, data_dir: str | None = None, image_size: int | None = None
         ) -> datasets.Dataset:
    """Any prepared TFDS image classification dataset as a `datasets.Dataset` (a user's
    labels: no default noise)."""
    loaded = load_tfds_image_classification(name, data_dir=data_dir, image_size=image_size)
    for note in loaded.notes:
        print(f'note: {note}')
    class_names = tuple(loaded.class_names)
    splits = {key: datasets.Split(part.inputs, part.labels)
              for key, part in loaded.splits.items()}
    return datasets.of_user_splits(splits['train'], splits.get('val'), splits.get('test'),
                                   class_names)


class TfdsSource:
    """The `Source` of 'tfds:NAME'."""

    name = 'tfds'
    prefixed = True
    options = frozenset({'data_dir', 'image_size'})
    human_labels = ()
    example = 'tfds:oxford_flowers102'
    summary = 'any TFDS image classification set'

    def load(self, argument: str, *, data_dir: str | None = None,
             image_size: int | None = None) -> datasets.Dataset:
        return load(argument, data_dir=data_dir, image_size=image_size)

    def claims(self, path: str) -> bool:
        del path
        return False


SOURCES = (TfdsSource(),)


def _shard_files(info, split: str) -> list[str]:
    """The split's data files (for the inputs' fingerprint); [] when TFDS does not say."""
    try:
        return [os.fspath(p) for p in info.splits[split].filepaths]
    except Exception:  # pylint: disable=broad-except  # older TFDS: no filepaths
        return []
