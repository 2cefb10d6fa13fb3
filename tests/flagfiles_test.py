"""Every flags/*.cfg: a readable flagfile that parses and runs one training step.

The named settings are parsed in-process against the real definitions
(`cli.define_flags()`), each inside `flagsaver` so no value leaks into another test.
Nested `--flagfile=flags/...` lines are relative to the repository root, so every test
runs from there (`monkeypatch.chdir`).

The one-step runs use TFDS's `mock_data` with an `as_dataset_fn` rather than its random
`num_examples` generator, because:
  * the random generator gives train and test the same size, and ce_clean on CIFAR-100
    needs every (noisy) class twice in train (one meta sample per class, and training
    keeps some), i.e. thousands of examples, which would also make the test split (and
    its evaluation on CPU) thousands of images;
  * here the clean label of example i is i % K (each class 20 times in train), the
    human-noise fields of cifar10_n are in [0, K) on train and -1 on test, as in the real
    TFDS data (random mock values would be in range too, but not -1 on test), and the
    test split has 16 images: two eval batches of 8.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
_INCLUDE = re.compile(r"^--flagfile=(\S+)$")


def _flagfiles() -> list[str]:
    return sorted(f"flags/{name}" for name in os.listdir(os.path.join(ROOT, "flags"))
                  if name.endswith(".cfg"))


def _lines(path: str) -> list[str]:
    with open(os.path.join(ROOT, path)) as f:
        return [line.strip() for line in f if line.strip()]


FLAGFILES = _flagfiles()
# Files pulled in by another file (common_cifar.cfg, digits_common.cfg) are shared values,
# not settings: they are parsed but not run on their own.
INCLUDES = sorted({m.group(1) for path in FLAGFILES for line in _lines(path)
                   if (m := _INCLUDE.match(line))})
SETTINGS = [path for path in FLAGFILES if path not in INCLUDES]


@pytest.fixture(autouse=True)
def _repo_root_and_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    cli.define_flags()
    with flagsaver.flagsaver():  # every value set by a test is restored afterwards
        yield


def _parse(*args: str) -> None:
    """Parses from all-defaults (whatever an earlier parse left behind is cleared first)."""
    FLAGS.unparse_flags()
    FLAGS(["flagfiles_test", *args])


# --------------------------------------------------------------------------- the files

def test_the_named_settings_exist() -> None:
    for name in ("common_cifar", "cifar10_sym60_wnet_clid", "cifar100_sym60_wnet_clid",
                 "cifar10_sym40_wnet_clid", "cifar100_sym40_wnet_clid",
                 "cifar100_sym40_vri_clid", "cifar100_instance40_vri_clid",
                 "cifar10_n_worst_vri_clid", "cifar10_n_aggre_vri_clid",
                 "cifar10_n_rand1_vri_clid", "digits_sym40"):
        assert f"flags/{name}.cfg" in FLAGFILES, name
    for path in FLAGFILES:  # every CLID setting has its oracle baseline
        if path.startswith("flags/cifar") and path.endswith("_clid.cfg"):
            assert path.replace("_clid.cfg", "_ce_clean.cfg") in FLAGFILES, path
    assert INCLUDES == ["flags/common_cifar.cfg", "flags/digits_common.cfg"]


@pytest.mark.parametrize("path", FLAGFILES)
def test_file_is_a_commented_header_then_one_flag_per_line(path: str) -> None:
    lines = _lines(path)
    assert lines[0].startswith("#"), f"{path} must open with '#' comment lines"
    for line in lines:
        assert line.startswith("#") or re.fullmatch(r"--\w+(=\S+)?", line), (path, line)
    if path in SETTINGS:  # the header gives the exact command for this very file
        assert f"python -m clid_tf.train --flagfile={path}" in "\n".join(lines), path
    for line in lines:
        if (m := _INCLUDE.match(line)):
            assert m.group(1) in FLAGFILES, (path, line)


@pytest.mark.parametrize("path", FLAGFILES)
def test_file_parses_against_the_real_flags(path: str) -> None:
    _parse(f"--flagfile={path}")  # an unknown flag or bad value raises flags.Error
    assert FLAGS.is_parsed()


def test_command_line_overrides_the_file() -> None:
    _parse("--flagfile=flags/cifar10_sym60_wnet_clid.cfg", "--warmup_epochs=5",
           "--meta_size=500")
    assert FLAGS.warmup_epochs == 5 and FLAGS.meta_size == 500
    assert FLAGS.meta_lr == 1e-5  # the rest of the file still holds


def test_flags_do_not_leak_between_tests() -> None:
    assert FLAGS["method"].value == FLAGS["method"].default
    assert FLAGS["dataset"].value == "digits"


# The reference values of METHOD.md sections 2.1, 2.2, 5 and 12, written out again here so
# a typo in a flagfile, or a file whose name says something else, fails this test.
_COMMON = dict(batch_size=100, meta_batch_size=100, meta_size=1000, tau=0.5, momentum=0.9,
               weight_decay=5e-4, lr_eta_min=1e-3, meta_weight_decay=5e-4,
               augment="strong", warmup_epochs=0, meta_scope="full", steps_per_epoch=0)
_WNET = dict(backbone="wrn28_10", lr=0.05, epochs=100, lr_schedule="cosine_periodic",
             meta_optimizer="sgd")
_VRI = dict(lr=0.02, epochs=150, lr_schedule="cosine", lr_tmax=150, meta_optimizer="adam",
            vri_kl=0.01)
_PER_METHOD = {("wnet", "clid"): dict(meta_lr=1e-5, lr_tmax=5),
               ("wnet", "ce_clean"): dict(meta_lr=1e-3, lr_tmax=20),
               ("vri", "clid"): dict(meta_lr=0.01),
               ("vri", "ce_clean"): dict(meta_lr=3e-4)}
_NAME = re.compile(r"flags/(?P<dataset>cifar10_n|cifar100|cifar10)_"
                   r"(?:(?P<noise>[a-z]+)(?P<rate>\d\d)|(?P<human>[a-z]+\d?))_"
                   r"(?P<net>wnet|vri)_(?P<method>clid|ce_clean)\.cfg")
CIFAR_SETTINGS = [path for path in SETTINGS if path.startswith("flags/cifar")]


@pytest.mark.parametrize("path", CIFAR_SETTINGS)
def test_cifar_setting_matches_its_name_and_the_reference(path: str) -> None:
    name = _NAME.fullmatch(path)
    assert name, f"{path}: not <dataset>_<noise><rate>_<wnet|vri>_<clid|ce_clean>.cfg"
    _parse(f"--flagfile={path}")
    want = {**_COMMON, **(_WNET if name["net"] == "wnet" else _VRI),
            **_PER_METHOD[name["net"], name["method"]],
            "dataset": name["dataset"], "noise": name["noise"] or name["human"],
            "meta_net": name["net"],
            "method": name["method"]}
    if name["net"] == "vri":  # ResNet-34 for human noise, else PreAct-ResNet-18
        want["backbone"] = "resnet34" if name["dataset"] == "cifar10_n" else "preact_resnet18"
    if name["rate"]:
        want["noise_rate"] = int(name["rate"]) / 100
    else:
        assert name["dataset"] == "cifar10_n" and name["human"] in cli.HUMAN_NOISE, path
    got = {key: FLAGS[key].value for key in want}
    assert got == want, path


# --------------------------------------------------------------------------- one step

_TRAIN_PER_CLASS = 20
_TEST_SIZE = 16
_HUMAN_FIELDS = ("aggre_label", "worse_label", "random_label1", "random_label2",
                 "random_label3", "noise_label")


def _fake_split(self: Any, split: Any, **kwargs: Any) -> tf.data.Dataset:
    """`mock_data(as_dataset_fn=...)`: a small CIFAR(-N) split (see the module docstring)."""
    del kwargs
    num_classes = self.info.features["label"].num_classes
    train = "train" in str(split)
    n = _TRAIN_PER_CLASS * num_classes if train else _TEST_SIZE
    rng = np.random.default_rng(0 if train else 1)
    label = np.arange(n, dtype=np.int64) % num_classes
    example = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": label}
    for field in _HUMAN_FIELDS:
        if field in self.info.features:
            flipped = rng.integers(0, num_classes, n)  # ~ 40% of labels changed
            noisy = np.where(rng.random(n) < 0.4, flipped, label)
            example[field] = noisy if train else np.full(n, -1, np.int64)
    return tf.data.Dataset.from_tensor_slices(example)


# One training step, the smallest batches and meta set; no SavedModel export.
_TINY = ("--epochs=1", "--steps_per_epoch=1", "--warmup_epochs=0", "--batch_size=4",
         "--meta_batch_size=4", "--meta_size=20", "--eval_batch_size=8", "--export=false",
         "--verbose=0")
# The settings' backbones stay, except WRN-28-10 (36M parameters), which is swapped for
# WRN-28-2, the same code path at width 2: its first second-order step on 2 CPU cores
# dominates this file's time otherwise. PreAct-ResNet-18 and ResNet-34 run as they are.
_SMALLER_BACKBONE = {"wrn28_10": "wrn28_2"}


def _tiny_overrides(path: str) -> list[str]:
    args = list(_TINY)
    lines = _lines(path)
    if "--dataset=cifar100" in lines and "--method=ce_clean" in lines:
        args.append("--meta_size=100")  # ce_clean takes meta_size // K per class: K = 100
    for line in lines:
        if line.startswith("--backbone=") and line[11:] in _SMALLER_BACKBONE:
            args.append(f"--backbone={_SMALLER_BACKBONE[line[11:]]}")
    return args


@pytest.mark.parametrize("path", SETTINGS)
def test_setting_runs_one_training_step_on_mock_data(path: str, tmp_path) -> None:
    workdir = tmp_path / "run"
    overrides = _tiny_overrides(path)
    with tfds.testing.mock_data(as_dataset_fn=_fake_split):
        _parse(f"--flagfile={path}", *overrides, f"--workdir={workdir}")
        file_flags = {k: FLAGS[k].value for k in ("dataset", "method", "meta_net", "noise")}
        cli.run()
    results = json.loads((workdir / "results.json").read_text())
    for key in ("final_test_accuracy", "best_test_accuracy", "selected_accuracy",
                "ensemble3_accuracy", "ensemble5_accuracy"):
        assert math.isfinite(results[key]) and 0.0 <= results[key] <= 1.0, (key, results[key])
    assert len(results["history"]["loss"]) == 1
    assert math.isfinite(results["history"]["loss"][0])
    assert results["flags"]["epochs"] == 1  # the overrides won over the file ...
    for key, value in file_flags.items():  # ... and the rest of the file held
        assert results["flags"][key] == value, key
    if file_flags["method"] != "ce":  # the meta step ran and gave a finite meta loss
        meta = results["history"][f"meta_{file_flags['method']}"]
        assert len(meta) == 1 and math.isfinite(meta[0]), meta
    if file_flags["dataset"].startswith("cifar"):
        assert results["num_test"] == _TEST_SIZE
        if file_flags["noise"] in cli.HUMAN_NOISE:  # the human label set, not clean labels
            assert 0.2 < results["realised_noise_rate"] < 0.6
