"""Datasets by CLI name: where each split's inputs are, their labels and class names.

`load(name)` is the one entry point:

  digits        scikit-learn's 8x8 digits, embedded (the offline default), in memory
  cifar10, cifar100, cifar10_n, cifar100_n
                TFDS CIFAR and CIFAR-N (human noisy labels), in memory (clid_tf.data.sources.cifar)
  npz:PATH      a user's arrays (clid_tf.data.sources.npz)
  folder:PATH   a user's class-folder tree of image files, streamed (clid_tf.data.image_files)
  list:FILE     a user's "relative/path label" list file under `data_root`, streamed
  tfds:NAME     any TFDS image classification dataset (clid_tf.data.sources.tfds)

Every loader returns a `Dataset`: per split a `sources.Source` (read by index inside
tf.data) and int64 labels beside it. Images are uint8 0..255 [H, W, C] from loading to
serving; per-channel `mean`/`std` are in [0, 1] pixel units. Flat feature vectors (npz only)
are float32 [D] with per-feature statistics in raw units. Label noise, meta-set splits and
pipelines are built elsewhere. Every failure the user can fix is a `DataError`, one line.
"""

from __future__ import annotations

import os

import numpy as np

from clid_tf.data import datasets
from clid_tf.data import inputs as sources
from clid_tf.data.datasets import BENCHMARKS, PREFIXES, Dataset, Split
from clid_tf.errors import DataError


def load(name: str, *, human_label: str | None = None, data_dir: str | None = None,
         data_root: str | None = None, image_size: int | None = None,
         val_list: str | None = None, test_list: str | None = None,
         class_names_file: str | None = None, resize_shorter: int | None = None) -> Dataset:
    """Loads a dataset by CLI name (see the module docstring).

    Args:
      name: 'digits', a TFDS CIFAR name, or a prefixed name 'npz:PATH', 'folder:PATH',
        'list:FILE', 'tfds:NAME'.
      human_label: the CIFAR-N label set ('cifar10_n'/'cifar100_n' only; `HUMAN_LABELS`).
      data_dir: TFDS data directory (TFDS datasets only; default $TFDS_DATA_DIR).
      data_root: the folder the paths of a 'list:' file are relative to (default: the
        list file's folder).
      image_size: resize images to image_size x image_size (file and TFDS data).
      val_list, test_list: 'list:' data only: list files of a validation and a test split
        (paths under the same data_root).
      class_names_file: 'list:' data only: one class name per line (index = label).
      resize_shorter: 'folder:' and 'list:' data only: resize each image's shorter side to
        this, then centre-crop image_size x image_size (`sources.FileSource`).

    Raises:
      DataError: unknown name, a human_label where none exists, or any loader failure.
    """
    if name not in ('cifar10_n', 'cifar100_n') and human_label is not None:
        raise DataError(f'dataset {name!r} has no human noisy labels; drop '
                        f'human_label={human_label!r} (only cifar10_n, cifar100_n)')
    if image_size is not None and (name in BENCHMARKS or name.startswith('npz:')):
        raise DataError(f'--image_size applies to folder:, list: and tfds: data; '
                        f'{name} has a fixed size')
    kind, _, arg = name.partition(':') if ':' in name else (name, '', '')
    if resize_shorter is not None and kind not in ('folder', 'list'):
        raise DataError(f'--resize_shorter applies to folder: and list: data, not {name}')
    try:
        sources.check_resize(image_size, resize_shorter)
    except ValueError as error:
        raise DataError(str(error)) from error
    if name == 'digits':
        return load_digits()
    if name in BENCHMARKS:
        from clid_tf.data.sources import cifar as tfds_cifar  # pylint: disable=import-outside-toplevel
        return tfds_cifar.load(name, human_label=human_label, data_dir=data_dir)
    if f'{kind}:' not in PREFIXES:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(BENCHMARKS)}, "
                        f"or {', '.join(p + '...' for p in PREFIXES)}")
    if not arg:
        raise DataError(f"'{kind}:' needs a {'name' if kind == 'tfds' else 'path'}, "
                        f"e.g. {kind}:{'oxford_flowers102' if kind == 'tfds' else '/data/mine'}")
    if kind == 'npz':
        from clid_tf.data.sources import npz as npz_data  # pylint: disable=import-outside-toplevel
        return npz_data.load(arg)
    if kind == 'tfds':
        from clid_tf.data.sources import tfds as tfds_images  # pylint: disable=import-outside-toplevel
        return from_tfds(tfds_images, arg, data_dir=data_dir, image_size=image_size)
    return from_files(kind, arg, data_root=data_root, image_size=image_size,
                      val_list=val_list, test_list=test_list,
                      class_names_file=class_names_file, resize_shorter=resize_shorter)


# --------------------------------------------------------------------------- digits

def load_digits(*, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), a fixed stratified split.

    The 0..16 grey levels are rescaled to 0..255 uint8 so digits look like any other image
    dataset to the pipeline and the exported model. A benchmark: its labels are clean.
    """
    from sklearn import datasets as sk_datasets
    from sklearn import model_selection

    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
            images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels)
    mean, std = datasets.array_stats(x_train)
    return Dataset(
            train=Split(sources.ArraySource(x_train), y_train, y_train.copy()), val=None,
            test=Split(sources.ArraySource(x_test), y_test), num_classes=10,
            class_names=tuple(str(c) for c in range(10)), mean=mean, std=std,
            labels_given=False)


# --------------------------------------------------------------------------- user files

def from_files(kind: str, path: str, *, data_root: str | None, image_size: int | None,
               val_list: str | None = None, test_list: str | None = None,
               class_names_file: str | None = None,
               resize_shorter: int | None = None) -> Dataset:
    """A class-folder tree ('folder') or "path label" list files ('list'), streamed."""
    from clid_tf.data import image_files  # pylint: disable=import-outside-toplevel
    if kind == 'folder':
        if data_root is not None or val_list or test_list or class_names_file:
            raise DataError('--data_root, --val_list, --test_list and --class_names_file '
                            'apply to list: data; a folder: path holds its own splits')
        lists = image_files.folder_splits(path)
    else:
        root = data_root if data_root is not None else os.path.dirname(os.path.abspath(path))
        names = (None if class_names_file is None
                 else image_files.read_class_names(class_names_file))
        lists = {'train': image_files.read_list(path, root=root, class_names=names)}
        for split, file in (('val', val_list), ('test', test_list)):
            if file:
                lists[split] = image_files.read_list(
                    file, root=root, class_names=lists['train'].class_names)
    checked, shape, warnings = image_files.check_splits(lists, image_size=image_size)
    for warning in warnings:
        print(f'warning: {warning}')
    class_names = tuple(checked['train'].class_names)

    def split(name):
        if name not in checked:
            return None
        return Split(sources.FileSource(checked[name], shape, image_size=image_size,
                                        resize_shorter=resize_shorter),
                     checked[name].labels)

    train = split('train')
    datasets.check_labels(train.labels, len(class_names), what='training labels')
    mean, std = datasets.source_stats(train.inputs)
    return Dataset(train=train, val=split('val'), test=split('test'),
                   num_classes=len(class_names), class_names=class_names, mean=mean,
                   std=std, labels_given=True)


def from_tfds(tfds_images, name: str, *, data_dir: str | None,
              image_size: int | None) -> Dataset:
    """Any TFDS image classification dataset (user labels: no default noise)."""
    loaded = tfds_images.load_tfds_image_classification(name, data_dir=data_dir,
                                                        image_size=image_size)
    for note in loaded.notes:
        print(f'note: {note}')
    class_names = tuple(loaded.class_names)
    splits = {key: Split(part.source, part.labels) for key, part in loaded.splits.items()}
    if 'train' not in splits:
        raise DataError(f'TFDS dataset {name!r} has no train split')
    datasets.check_labels(splits['train'].labels, len(class_names), what='training labels')
    mean, std = datasets.source_stats(splits['train'].inputs)
    return Dataset(train=splits['train'], val=splits.get('val'), test=splits.get('test'),
                   num_classes=len(class_names), class_names=class_names, mean=mean,
                   std=std, labels_given=True)


