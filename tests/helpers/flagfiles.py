"""The flagfiles of flags/ read the way absl reads them, and the mock CIFAR(-N) data the
flagfile tests run them on (tfds.testing.mock_data)."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import tensorflow as tf

from tests.helpers import ROOT


INCLUDE = re.compile(r"^--flagfile=(\S+)$")


def lines(path: str) -> list[str]:
    with open(os.path.join(ROOT, path)) as f:
        return [line.strip() for line in f if line.strip()]


def resolved(path: str) -> dict[str, str]:
    """flag -> value text of a flagfile, nested files expanded, later lines winning.

    Used only to group files and to size the mock runs; the tests parse with absl.
    """
    values: dict[str, str] = {}
    for line in lines(path):
        if (m := INCLUDE.match(line)):
            values.update(resolved(m.group(1)))
        elif line.startswith("--"):
            name, _, value = line[2:].partition("=")
            values[name] = value
    return values


FLAGFILES = sorted(f"flags/{name}" for name in os.listdir(os.path.join(ROOT, "flags"))
                   if name.endswith(".cfg"))
# Files pulled in by another file (common_cifar.cfg, digits_common.cfg) hold shared values,
# not settings: they are parsed but not run on their own.
INCLUDES = sorted({m.group(1) for path in FLAGFILES for line in lines(path)
                   if (m := INCLUDE.match(line))})
SSL_SETTINGS = [path for path in FLAGFILES if re.search(r"_(fixmatch|flexmatch)_", path)]


TRAIN_PER_CLASS = 20
TEST_SIZE = 16
HUMAN_FIELDS = ("aggre_label", "worse_label", "random_label1", "random_label2",
                 "random_label3", "noise_label")
HUMAN_RESAMPLED = 0.4  # share of train labels the fake human label sets redraw


def fake_split(self: Any, split: Any, **kwargs: Any) -> tf.data.Dataset:
    """`mock_data(as_dataset_fn=...)`: a small split of CIFAR(-N) or another TFDS image
    dataset (its own image shape; see the module docstring)."""
    num_classes = self.info.features["label"].num_classes
    train = "train" in str(split)
    n = TRAIN_PER_CLASS * num_classes if train else TEST_SIZE
    rng = np.random.default_rng(0 if train else 1)
    label = np.arange(n, dtype=np.int64) % num_classes
    shape = [d or 32 for d in self.info.features["image"].shape]  # CIFAR 32x32x3, FMNIST 28x28x1
    example = {"image": rng.integers(0, 256, (n, *shape), dtype=np.uint8), "label": label}
    for field in HUMAN_FIELDS:
        if field in self.info.features:
            redrawn = rng.integers(0, num_classes, n)
            noisy = np.where(rng.random(n) < HUMAN_RESAMPLED, redrawn, label)
            example[field] = noisy if train else np.full(n, -1, np.int64)
    if "image" in (kwargs.get("decoders") or {}):  # SkipDecoding: the encoded PNG bytes
        example["image"] = np.array([tf.io.encode_png(image).numpy()
                                     for image in example["image"]], dtype=object)
    return tf.data.Dataset.from_tensor_slices(example)


def write_tfds_metadata(name: str, data_dir: str, split_sizes: dict[str, int]) -> None:
    """Writes the metadata of a prepared (tfrecord) dataset, without its records, so that
    tfds.builder(name).is_prepared() holds under tfds.testing.mock_data(data_dir=...)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name=name,
                                             split='train', filetype_suffix='tfrecord')
    builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                                filename_template=template.replace(split=split))
            for split, n in split_sizes.items()]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)


def mock_tfds(path: str, data_dir):
    """`tfds.testing.mock_data` for a flagfile's runs: `fake_split` data, and for a
    `--dataset=tfds:NAME` setting NAME's metadata written as prepared in `data_dir`."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    dataset = resolved(path).get("dataset", "")
    if not dataset.startswith("tfds:"):
        return tfds.testing.mock_data(as_dataset_fn=fake_split)
    write_tfds_metadata(dataset[len("tfds:"):], str(data_dir), {"train": 60000, "test": 10000})
    return tfds.testing.mock_data(as_dataset_fn=fake_split, data_dir=str(data_dir))


def stop_before_training(monkeypatch, fake_train) -> None:
    """The command line up to (not into) training: every trainer's `build` returns no plan
    and the runner calls `fake_train(flags, setup, folder, plan, resuming=...)` instead of
    training it."""
    # pylint: disable=import-outside-toplevel
    from clid_tf import trainers
    from clid_tf.trainers import runner
    for trainer in trainers.registered():
        monkeypatch.setattr(trainer.module(), "build", lambda flags, setup: None)
    monkeypatch.setattr(runner, "train", fake_train)
