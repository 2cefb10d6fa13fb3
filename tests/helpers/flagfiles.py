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
    """`mock_data(as_dataset_fn=...)`: a small CIFAR(-N) split (see the module docstring)."""
    del kwargs
    num_classes = self.info.features["label"].num_classes
    train = "train" in str(split)
    n = TRAIN_PER_CLASS * num_classes if train else TEST_SIZE
    rng = np.random.default_rng(0 if train else 1)
    label = np.arange(n, dtype=np.int64) % num_classes
    example = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": label}
    for field in HUMAN_FIELDS:
        if field in self.info.features:
            redrawn = rng.integers(0, num_classes, n)
            noisy = np.where(rng.random(n) < HUMAN_RESAMPLED, redrawn, label)
            example[field] = noisy if train else np.full(n, -1, np.int64)
    return tf.data.Dataset.from_tensor_slices(example)
