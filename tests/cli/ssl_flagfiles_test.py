"""The semi-supervised flagfiles (flags/*_4000_*_{fixmatch,flexmatch}_{clid,ce}.cfg): the
authors' values (committed config, reported runs: ruofanhu/CLID-MU@5cd0608,
semi/config/classic_cv_meta/ and semi/process_performance.ipynb), the header figures, the
wiring on mock CIFAR data (4000 labels replaced by 100 on the 200 mock images) and one
training step; and the digits setting of the issue-12 benchmark
(flags/digits_200_sym40_fixmatch_clid.cfg), wired up.

flagfiles_test.py parses these files with the others; the mock data is its `fake_split`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.data import splits
from clid_tf.data.sources import cifar as tfds_cifar
from tests.helpers import ROOT, flagfiles
from tests.helpers.flagfiles import SSL_SETTINGS, fake_split, lines

FLAGS = flags.FLAGS
_NAME = re.compile(r"flags/(?:cifar10_4000_(?P<sym>sym\d\d)|cifar10_n_(?P<human>worst)_4000)_"
                   r"(?P<algo>fixmatch|flexmatch)_(?P<method>clid|ce)\.cfg")
# The authors' committed config and the reported runs' meta set, written out again here
# (ruofanhu/CLID-MU@5cd0608: semi/config/classic_cv_meta/*_lossnet/*.yaml; cell 9 of
# semi/process_performance.ipynb, whose runs draw the meta set from the unlabeled part:
# semi/semilearn/core/utils/build.py: get_meta_set(), 'feat_expno1N').
_REFERENCE = dict(num_labels=4000, include_lb_to_ulb=False, backbone="wrn28_2_fork",
                  batch_size=100, uratio=7, p_cutoff=0.95, lambda_u=1.0, thresh_warmup=True,
                  lr=0.03, momentum=0.9, weight_decay=1e-4, ema_decay=0.999, eval_every=512,
                  epochs=59, warmup_epochs=0, ssl_meta_source="unlabeled", meta_size=10000,
                  meta_batch_size=1000, tau=0.1, virtual_step="optimizer",
                  meta_optimizer="sgd", meta_weight_decay=5e-4, select_augment="weak")
_FIGURES = {("fixmatch", "sym20"): "88.90", ("fixmatch", "sym50"): "85.26",
            ("fixmatch", "worst"): "81.67", ("flexmatch", "sym20"): "89.79",
            ("flexmatch", "sym50"): "85.79", ("flexmatch", "worst"): "83.25"}
_META_LR = {"fixmatch": 1e-4, "flexmatch": 1e-5}
CIFAR = [path for path in SSL_SETTINGS if path.startswith("flags/cifar")]
DIGITS = "flags/digits_200_sym40_fixmatch_clid.cfg"
_SMALL = ("--num_labels=100", "--batch_size=4", "--uratio=2", "--meta_size=20",
          "--meta_batch_size=4", "--eval_batch_size=8", "--export=none", "--verbose=0")


@pytest.fixture(autouse=True)
def _repo_root_and_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tfds_cifar, "online", lambda: True)  # mock data is never prepared
    cli.define_flags()
    with flagsaver.flagsaver():
        yield


def _parse(*args: str) -> None:
    FLAGS.unparse_flags()
    FLAGS(["ssl_flagfiles_test", *args])


def test_the_twelve_cifar_settings_and_the_digits_one_exist():
    assert len(CIFAR) == 12 and all(_NAME.fullmatch(p) for p in CIFAR)
    assert sorted(SSL_SETTINGS) == sorted([*CIFAR, DIGITS])


@pytest.mark.parametrize("path", CIFAR)
def test_setting_matches_its_name_the_reference_and_quotes_the_figure(path: str):
    name = _NAME.fullmatch(path)
    _parse(f"--flagfile={path}")
    want = {**_REFERENCE, "trainer": name["algo"], "method": name["method"]}
    if name["human"]:
        want.update(dataset="cifar10_n", noise="worst")
    else:
        want.update(dataset="cifar10", noise="sym_exact",
                    noise_rate=int(name["sym"][3:]) / 100)
    if name["method"] == "clid":
        want["meta_lr"] = _META_LR[name["algo"]]
    assert {key: FLAGS[key].value for key in want} == want, path
    header = " ".join(line for line in lines(path) if line.startswith("#"))
    if name["method"] == "clid":
        figure = _FIGURES[name["algo"], name["sym"] or name["human"]]
        assert f"reports {figure}%" in header and "optimistic" in header, path
    assert "ESTIMATE" in header


def _fake_train(seen: dict):
    def fake_train(flags, setup, folder, *args: Any, **kwargs: Any) -> dict:
        seen["setup"] = setup
        return {"selected_epoch": 1, **{key: 0.0 for key in (
            "final_test_accuracy", "best_test_accuracy", "selected_accuracy",
            "ensemble5_accuracy")}}
    return fake_train


def test_the_digits_setting_wires_up(tmp_path, monkeypatch):
    seen = {}
    flagfiles.stop_before_training(monkeypatch, _fake_train(seen))
    _parse(f"--flagfile={DIGITS}", f"--workdir={tmp_path / 'run'}")
    assert (FLAGS.trainer, FLAGS.method, FLAGS.noise) == ("fixmatch", "clid", "sym_exact")
    cli.run()
    setup = seen["setup"]
    assert (len(setup.train_indices), len(setup.unlabeled_indices)) == (200, 1237)
    assert set(setup.meta_indices) <= set(setup.unlabeled_indices)


@pytest.mark.parametrize("path", CIFAR)
def test_setting_wires_up_on_mock_data(path: str, tmp_path, monkeypatch):
    """The CLI up to (not into) training: the labeled part, its noise, the meta set."""
    seen = {}
    flagfiles.stop_before_training(monkeypatch, _fake_train(seen))
    with tfds.testing.mock_data(as_dataset_fn=fake_split):
        _parse(f"--flagfile={path}", *_SMALL, f"--workdir={tmp_path / 'run'}")
        cli.run()
        rate = FLAGS.noise_rate if FLAGS.noise == "sym_exact" else 0.4 * 9 / 10
    setup = seen["setup"]
    clean = setup.dataset.train.clean_labels
    np.testing.assert_array_equal(np.bincount(clean[setup.train_indices]), np.full(10, 10))
    assert set(setup.meta_indices) <= set(setup.unlabeled_indices)
    assert np.all(setup.noisy_labels[setup.unlabeled_indices] == -1)
    realised = splits.noise_report(setup)["realised_noise_rate"]
    assert abs(realised - rate) < 0.2, (realised, rate)  # 100 labels: a loose check


_STEP = ("flags/cifar10_n_worst_4000_flexmatch_clid.cfg",)


@pytest.mark.parametrize("path", [p if p in _STEP else pytest.param(p, marks=pytest.mark.slow)
                                  for p in CIFAR])
def test_setting_runs_one_training_step_on_mock_data(path: str, tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=fake_split):
        _parse(f"--flagfile={path}", *_SMALL, "--epochs=1", "--eval_every=1",
               f"--workdir={tmp_path / 'run'}")
        method = FLAGS.method
        cli.run()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("final_test_accuracy", "selected_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    history = results["history"]
    assert math.isfinite(history["loss"][0]) and math.isfinite(history["loss_unsup"][0])
    if method == "clid":
        assert math.isfinite(history["meta_clid"][0])
