"""Every flags/*.cfg: a readable flagfile that parses, wires up and trains one step.

Flagfiles are parsed in-process against the real definitions (`cli.define_flags()`),
each test inside `flagsaver` so no value leaks into another test. Nested
`--flagfile=flags/...` lines are relative to the repository root, so every test runs from
there (`monkeypatch.chdir`).

Runs on mock data use TFDS's `mock_data` with an `as_dataset_fn` rather than its random
`num_examples` generator, because that generator gives train and test the same size, and
ce_clean on CIFAR-100 needs every noisy class at least twice in train (one meta sample per
class, and training keeps some): thousands of images, and as many test images to evaluate
on CPU. Here the clean label of train example i is i % K (each class 20 times), the
human-noise fields of cifar10_n are in [0, K) on train (40% resampled) and -1 on test, as
in the real TFDS data, and the test split has 16 images (two eval batches of 8).

The real-world settings (flags/animal10n_*.cfg, flags/clothing1m_*.cfg) name data files
the user prepares; here they run on small generated files in the same layouts
(`_file_data`): Animal-10N's training/ and testing/ folders of LABEL_ID.jpg with their
"path label" lists, and Clothing1M's images/ tree with the noisy train, clean val and clean
test lists and the category-names file (images of mixed sizes, for the resize + crop).

Time (2 CPU cores): one CIFAR training step costs 10-20 s, nearly all of it tracing (the
strong-augmentation pipelines and the second-order meta step), so all 22 CIFAR settings
take about 6 minutes. By default one step runs for one file per code path (files that
differ only in numbers such as the noise rate or meta_lr, or in which CIFAR-10N label set
they read, share one); every file still goes through the CLI wiring, its noise injection
and its learning-rate schedule (`test_setting_wires_up_on_mock_data`, under a second).
The other files' steps are marked `slow`, which pytest.ini deselects by default (`-m "not
slow"`): `pytest -m slow tests/flagfiles_test.py` runs them, `-m "slow or not slow"` all.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.data.sources import cifar as tfds_cifar
from clid_tf.core import schedules
from clid_tf.data import sources
from clid_tf.data import splits
from tests.helpers import flagfiles

FLAGS = flags.FLAGS
# The semi-supervised settings (FixMatch / FlexMatch) have their own checks and mock runs
# (ssl_flagfiles_test.py); here they are only read and parsed.
SETTINGS = [path for path in flagfiles.FLAGFILES if path not in flagfiles.INCLUDES and path not in flagfiles.SSL_SETTINGS]
# --trainer=dividemix settings have their own reference table (dividemix_flagfiles_test.py).
DIVIDEMIX = [path for path in SETTINGS if "_dividemix_" in path]


def _code_path(path: str) -> tuple:
    """What decides which code a training step runs; numbers and label-set names aside."""
    values = flagfiles.resolved(path)
    noise = values.get("noise")
    return (values.get("dataset"), "human" if sources.is_human_label(noise) else noise,
            *(values.get(key) for key in ("trainer", "backbone", "meta_net", "method", "augment",
                                          "lr_schedule", "meta_optimizer", "meta_grad",
                                          "meta_scope", "warmup_epochs")))


def _step_representatives() -> dict[str, str]:
    """setting -> the setting whose training step stands for it (the last in name order:
    sym60 rather than sym20/40, worst rather than aggre/rand1)."""
    groups: dict[tuple, list[str]] = {}
    for path in SETTINGS:
        groups.setdefault(_code_path(path), []).append(path)
    return {path: max(group) for group in groups.values() for path in group}


REPRESENTATIVE = _step_representatives()
# The default run trains one step of these two: WNet + CLID on CIFAR-10 (WRN) and on TFDS's
# fashion_mnist through the generic `tfds:` source. Every other file (VRI, ce_clean,
# CIFAR-100/10N, instance and human noise, PreAct-ResNet-18, ResNet-34) is wired up by its
# wiring test and its step runs with -m slow; VRI and ce_clean steps run end to end on
# digits in tests/cli. Every other file is wired up by `test_setting_wires_up_on_mock_data` and its
# own step runs with `-m slow`; the digits files also run end to end in cli_test.py.
DEFAULT_STEPS = ("flags/cifar10_sym60_wnet_clid.cfg",
                 "flags/fmnist_clid.cfg")  # tfds:fashion_mnist, 28x28x1, pooled_cnn, top:1


@pytest.fixture(autouse=True)
def _repo_root_and_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(flagfiles.ROOT)
    cli.define_flags()
    with flagsaver.flagsaver():  # every value a test sets is restored afterwards
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
                 "cifar10_n_rand1_vri_clid", "digits_sym40", "fmnist_common", "fmnist_ce",
                 "fmnist_clid", "fmnist_vri_clid", "fmnist_dividemix"):
        assert f"flags/{name}.cfg" in flagfiles.FLAGFILES, name
    for path in SETTINGS:  # every CIFAR CLID setting has its oracle baseline
        if path.startswith("flags/cifar") and path.endswith("_clid.cfg") and (
                path not in DIVIDEMIX):  # (DivideMix's: dividemix_flagfiles_test)
            assert path.replace("_clid.cfg", "_ce_clean.cfg") in flagfiles.FLAGFILES, path
    assert flagfiles.INCLUDES == ["flags/animal10n_common.cfg", "flags/cifar_dividemix_common.cfg",
                        "flags/clothing1m_common.cfg", "flags/common_cifar.cfg",
                        "flags/common_ssl_cifar10.cfg", "flags/digits_common.cfg",
                        "flags/fmnist_common.cfg"]
    for name in ("animal10n_vri_single_clid", "animal10n_ce", "clothing1m_vri_single_clid",
                 "clothing1m_ce"):
        assert f"flags/{name}.cfg" in SETTINGS, name


@pytest.mark.parametrize("path", flagfiles.FLAGFILES)
def test_file_is_a_commented_header_then_one_flag_per_line(path: str) -> None:
    lines = flagfiles.lines(path)
    assert lines[0].startswith("#"), f"{path} must open with '#' comment lines"
    for line in lines:
        assert line.startswith("#") or re.fullmatch(r"--\w+(=\S+)?", line), (path, line)
    if path not in flagfiles.INCLUDES:  # the header gives the exact command for this very file
        assert f"python -m clid_tf.train --flagfile={path}" in "\n".join(lines), path
    for line in lines:
        if (m := flagfiles.INCLUDE.match(line)):
            assert m.group(1) in flagfiles.FLAGFILES, (path, line)


@pytest.mark.parametrize("path", flagfiles.FLAGFILES)
def test_file_parses_against_the_real_flags(path: str) -> None:
    _parse(f"--flagfile={path}")  # an unknown flag or a bad value raises flags.Error
    assert FLAGS.is_parsed()
    for name, value in flagfiles.resolved(path).items():  # every line reached absl
        assert FLAGS[name].present, (path, name, value)


def test_command_line_overrides_the_file() -> None:
    _parse("--flagfile=flags/cifar10_sym60_wnet_clid.cfg", "--warmup_epochs=5",
           "--meta_size=500")
    assert FLAGS.warmup_epochs == 5 and FLAGS.meta_size == 500
    assert FLAGS.meta_lr == 1e-5  # the rest of the file still holds


# The authors' WNet / VRI script values (ruofanhu/CLID-MU@5cd0608: main_wnet.py, main_vri.py and
# their submit_{wnet,vri}_{clid,base}.sh), written out again here so
# that a typo in a flagfile, or a file whose name says something else, fails this test.
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
CIFAR_SETTINGS = [path for path in SETTINGS if path.startswith("flags/cifar")
                  and path not in DIVIDEMIX]


@pytest.mark.parametrize("path", CIFAR_SETTINGS)
def test_cifar_setting_matches_its_name_and_the_reference(path: str) -> None:
    name = _NAME.fullmatch(path)
    assert name, f"{path}: not <dataset>_<noise><rate>_<wnet|vri>_<clid|ce_clean>.cfg"
    _parse(f"--flagfile={path}")
    want = {**_COMMON, **(_WNET if name["net"] == "wnet" else _VRI),
            **_PER_METHOD[name["net"], name["method"]],
            "dataset": name["dataset"], "noise": name["noise"] or name["human"],
            "meta_net": name["net"], "method": name["method"]}
    if name["net"] == "vri":  # ResNet-34 for human noise, else PreAct-ResNet-18
        want["backbone"] = "resnet34" if name["dataset"] == "cifar10_n" else "preact_resnet18"
    if name["rate"]:
        want["noise_rate"] = int(name["rate"]) / 100
    else:
        assert name["dataset"] == "cifar10_n" and sources.is_human_label(name["human"]), path
    assert {key: FLAGS[key].value for key in want} == want, path


# --------------------------------------------------------------------------- mock runs

# The smallest batches and meta set, no SavedModel. ce_clean takes meta_size // K samples
# per class, so CIFAR-100 needs a meta set of 100.
_SMALL = ("--batch_size=4", "--meta_batch_size=4", "--eval_batch_size=8", "--export=none",
          "--verbose=0")
# The settings' backbones run as they are except WRN-28-10 (36M parameters), swapped for
# WRN-28-2, the same code at width 2: on 2 CPU cores one WNet run then takes about 12 s
# instead of about 20 s. PreAct-ResNet-18 and ResNet-34 run unchanged.
_SMALLER_BACKBONE = {"wrn28_10": "wrn28_2"}


def _small_overrides(path: str, folder) -> list[str]:
    """The small sizes, and for a real-world setting the generated data in `folder`."""
    values = flagfiles.resolved(path)
    meta_size = 100 if values.get("dataset", "").startswith("cifar100") else 20
    args = [*_SMALL, f"--meta_size={meta_size}"]
    if values.get("backbone") in _SMALLER_BACKBONE:
        args.append(f"--backbone={_SMALLER_BACKBONE[values['backbone']]}")
    for name in _FILE_DATA:
        if os.path.basename(path).startswith(name):
            args += _file_data(name, folder)
    return args


# --------------------------------------------------------------------------- file data

_FILE_DATA = ("animal10n", "clothing1m")
_CLOTHING_CLASSES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie",
                     "Windbreaker", "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest",
                     "Underwear")


def _jpeg(path, shape, rng) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, quality=90)


def _file_data(name: str, folder) -> list[str]:
    """Generated files in `name`'s real layout under `folder`; the flags that point there
    (and shrink the sizes: 32x32 crops, a small subset, no weights download)."""
    rng = np.random.default_rng(0)
    root = folder / name
    if name == "animal10n":  # training/LABEL_ID.jpg, testing/LABEL_ID.jpg, 64x64 -> 32x32
        for split, per_class in (("training", 4), ("testing", 2)):
            lines = []
            for i in range(10 * per_class):
                label = i % 10
                _jpeg(root / split / f"{label}_{i}.jpg", (32, 32, 3), rng)
                lines.append(f"{split}/{label}_{i}.jpg {label}")
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        return [f"--dataset=list:{root / 'training.txt'}",
                f"--test_list={root / 'testing.txt'}"]
    # Clothing1M: images/D/DD/NAME.jpg of mixed sizes, three lists, the category names
    lists = {}
    for split, per_class in (("noisy_train", 3), ("clean_val", 2), ("clean_test", 1)):
        lines = []
        for i in range(14 * per_class):
            rel = f"images/{i % 10}/{i % 100:02d}/{split}_{i}.jpg"
            _jpeg(root / rel, [(40, 48, 3), (48, 40, 3), (37, 52, 3)][i % 3], rng)
            lines.append(f"{rel} {i % 14}")
        lists[split] = root / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    (root / "category_names_eng.txt").write_text("\n".join(_CLOTHING_CLASSES) + "\n")
    return [f"--dataset=list:{lists['noisy_train']}", f"--val_list={lists['clean_val']}",
            f"--test_list={lists['clean_test']}",
            f"--class_names_file={root / 'category_names_eng.txt'}", "--image_size=32",
            "--resize_shorter=36", "--train_subset=28", "--pretrained=none"]


def _expected_noise_rate() -> float:
    """Expected flip rate of the parsed setting's noise on the mock data."""
    k = 100 if FLAGS.dataset.startswith("cifar100") else 10
    if sources.is_human_label(FLAGS.noise):
        return flagfiles.HUMAN_RESAMPLED * (k - 1) / k
    if FLAGS.noise == "sym":  # `unif` of ruofanhu/CLID-MU@5cd0608, dataloader.py
        return FLAGS.noise_rate * (k - 1) / k
    if FLAGS.noise == "asym_cifar10":  # 5 of the 10 classes have a target class
        return FLAGS.noise_rate / 2
    return FLAGS.noise_rate


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked TFDS data is never 'prepared': pretend the download host is reachable."""
    monkeypatch.setattr(tfds_cifar, "online", lambda: True)


@pytest.mark.parametrize("path", SETTINGS)
def test_setting_wires_up_on_mock_data(path: str, tmp_path, monkeypatch) -> None:
    """The CLI with the file's own epochs and schedule, up to (not into) training."""
    seen = {}

    def fake_train(flags, setup: splits.Setup, folder, *args: Any, **kwargs: Any) -> dict:
        seen.update(setup=setup, lr_schedule=FLAGS.lr_schedule, lr=FLAGS.lr,
                    epochs=FLAGS.epochs, lr_tmax=FLAGS.lr_tmax, lr_eta_min=FLAGS.lr_eta_min,
                    lr_milestones=[int(m) for m in FLAGS.lr_milestones],
                    lr_gamma=FLAGS.lr_gamma)
        return {"selected_epoch": 1, **{key: 0.0 for key in (
            "final_test_accuracy", "best_test_accuracy", "selected_accuracy",
            "ensemble5_accuracy")}}

    flagfiles.stop_before_training(monkeypatch, fake_train)
    workdir = tmp_path / "run"
    with flagfiles.mock_tfds(path, tmp_path / "tfds"):
        _parse(f"--flagfile={path}", *_small_overrides(path, tmp_path),
               f"--workdir={workdir}")
        cli.run()
        expected_rate = None if FLAGS.noise == "none" else _expected_noise_rate()
        epochs, lr, eta_min = FLAGS.epochs, FLAGS.lr, FLAGS.lr_eta_min
        start = FLAGS.lr_schedule_start
    assert (workdir / "results.json").exists() and (workdir / "flags.cfg").exists()
    setup = seen["setup"]
    num_classes = setup.dataset.num_classes
    assert 0 <= setup.noisy_labels.min() and setup.noisy_labels.max() < num_classes
    realised = splits.noise_report(setup)["realised_noise_rate"]
    if expected_rate is None:  # a user's labels, used as given: nothing injected or known
        assert realised is None and setup.dataset.labels_given
    else:
        assert abs(realised - expected_rate) < 0.1, (realised, expected_rate)
    # The learning rate at the start of every epoch of the file's full run.
    schedule = schedules.build(seen["lr_schedule"], seen["lr"], steps_per_epoch=1,
                               epochs=seen["epochs"], t_max=seen["lr_tmax"],
                               eta_min=seen["lr_eta_min"], milestones=seen["lr_milestones"],
                               gamma=seen["lr_gamma"], start_epoch=start)
    lrs = np.array([float(schedule(epoch) if callable(schedule) else schedule)
                    for epoch in range(epochs)])
    assert lrs[0] == pytest.approx(lr) and np.isfinite(lrs).all()
    tolerance = 1e-6  # relative: the schedules compute in float32 (0.1 -> 0.10000000149)
    floor = eta_min if seen["lr_schedule"].startswith("cosine") else 0.0  # a cosine's floor
    assert (lrs >= floor * (1 - tolerance)).all() and (lrs <= lr * (1 + tolerance)).all()
    if seen["lr_schedule"].startswith("cosine"):  # it anneals within the run (the last
        # epoch of an 8-epoch run starts 4% of the way above the floor)
        assert lrs.min() < eta_min + 0.05 * (lr - eta_min)


_ONE_STEP = ("--epochs=1", "--steps_per_epoch=1", "--warmup_epochs=0")


def _step_param(path: str):
    if path in DEFAULT_STEPS:
        return path
    return pytest.param(path, marks=pytest.mark.slow)


@pytest.mark.parametrize("path", [_step_param(path) for path in SETTINGS])
def test_setting_runs_one_training_step_on_mock_data(path: str, tmp_path) -> None:
    workdir = tmp_path / "run"
    with flagfiles.mock_tfds(path, tmp_path / "tfds"):
        _parse(f"--flagfile={path}", *_small_overrides(path, tmp_path), *_ONE_STEP,
               f"--workdir={workdir}")
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
        assert results["num_test"] == flagfiles.TEST_SIZE
