"""--trainer=fixmatch|flexmatch through the real CLI on digits: a smoke test,
the exported selected EMA weights, the meta trainer on the same
labeled part, and kill -9 then resume."""

import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.data.sources.digits import load_digits
from clid_tf.metanets import wnet
from tests.helpers import ROOT
from tests.helpers import QUIET_ENV as ENV
from tests.helpers.cli import run_cli

# Smoke run: 20 labels per class, 40% symmetric noise (SSL convention), B = 16, uratio 3,
# meta batch 64 of unlabeled images (128 CLID rows); 3 evaluations of 50 iterations.
SMOKE = ["--trainer=fixmatch", "--num_labels=200", "--noise=sym_exact", "--noise_rate=0.4",
         "--batch_size=16", "--uratio=3", "--meta_size=500", "--meta_batch_size=64",
         "--eval_every=50", "--epochs=3", "--warmup_epochs=0", "--ema_decay=0.99",
         "--tau=0.5", "--verbose=0"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ssl") / "fixmatch")
    proc = run_cli(f"--workdir={workdir}", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_fixmatch_clid_smoke_run_on_digits(smoke_run):
    workdir, proc = smoke_run
    results = json.load(open(os.path.join(workdir, "results.json")))
    history = results["history"]
    for key in ("loss", "loss_sup", "loss_unsup", "mask_ratio", "meta_clid", "weight_mean",
                "weight_std", "meta_set_clid", "test_accuracy"):
        assert len(history[key]) == 3 and np.all(np.isfinite(history[key])), key
    for key in ("final_test_accuracy", "best_test_accuracy", "selected_accuracy"):
        assert 0.1 < results[key] <= 1.0, key  # the EMA network, above chance
    assert results["final_test_accuracy"] == history["test_accuracy"][-1]
    # the cosine anneals every iteration: only the last evaluation is at the lowest rate
    assert np.all(np.diff(history["lr"]) < 0)
    assert results["eligible_epochs"] == [3] and results["selected_epoch"] == 3
    assert results["selected_step"] == 150
    assert (results["num_labeled"], results["num_unlabeled"], results["num_meta"]) == (
        200, 1237, 500)
    assert "plan: digits (200 labeled, 1237 unlabeled, 360 test, 10 classes)" in proc.stdout
    assert "clid_tf.audit" not in proc.stdout
    # w changes: the trained loss-net's weighting function is not the initial one.
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    initial = wnet.WeightNet(seed=0, normalize=False)
    initial(tf.zeros([1]))
    # (callbacks.checkpoint_of: the loss-net's variables as one list, in `variables` order)
    trained = sorted((n for n in reader.get_variable_to_shape_map()
                      if n.startswith("meta_net_variables/") and "OPTIMIZER" not in n),
                     key=lambda n: int(n.split("/")[1]))
    assert len(trained) == len(initial.variables) == 4
    assert any(not np.allclose(reader.get_tensor(n), v.numpy())
               for n, v in zip(trained, initial.variables))
    with np.load(os.path.join(workdir, "split.npz")) as split:
        assert np.all(split["noisy_labels"][split["unlabeled_indices"]] == -1)
        assert not set(split["train_indices"]) & set(split["unlabeled_indices"])


def test_saved_model_serves_the_selected_evaluations_ema_weights(smoke_run):
    workdir, _ = smoke_run
    results = json.load(open(os.path.join(workdir, "results.json")))
    data = load_digits()
    net = backbones.build("small_cnn", num_classes=10, input_shape=(8, 8, 1), mean=data.mean,
                          std=data.std)
    kept = os.path.join(workdir, "checkpoints", "selected",
                        f"epoch-{results['selected_epoch']}.npz")
    with np.load(kept) as saved:
        net.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    images = data.test.inputs.array
    served = tf.saved_model.load(os.path.join(workdir, "saved_model")).signatures[
        "serving_default"](images=tf.constant(images))["probabilities"].numpy()
    want = tf.nn.softmax(net(images.astype(np.float32), training=False)[0]).numpy()
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)
    labels = data.test.labels
    assert np.mean(want.argmax(axis=1) == labels) == pytest.approx(
        results["selected_accuracy"])


def test_tensorboard_has_the_ssl_scalars(smoke_run):
    workdir, _ = smoke_run
    tags = set()
    for path in glob.glob(os.path.join(workdir, "tensorboard", "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    for tag in ("loss_sup", "loss_unsup", "mask_ratio", "weight_std", "weight_clean",
                "weight_noisy", "meta_clid", "meta_set_clid", "test_accuracy",
                "selected_accuracy"):
        assert f"epoch_{tag}" in tags, tag


@pytest.mark.slow  # covered by ssl_flagfiles wiring of --num_labels and the meta trainer runs in train_test
def test_the_meta_trainer_on_the_same_labeled_part(smoke_run, tmp_path):
    """--trainer=meta --num_labels: the supervised-only baseline sees the smoke run's
    labeled part, noisy labels and meta set."""
    split = [a for a in SMOKE if a.split("=")[0] in (
        "--num_labels", "--noise", "--noise_rate", "--meta_size", "--batch_size",
        "--meta_batch_size", "--tau", "--verbose")]
    meta = run_cli(f"--workdir={tmp_path / 'meta'}", "--trainer=meta", "--steps_per_epoch=10",
                   "--epochs=1", "--warmup_epochs=0", "--export=none", *split)
    assert meta.returncode == 0, meta.stderr[-3000:]
    assert "200 labeled, 1237 unlabeled (not trained on)" in meta.stdout
    results = json.load(open(tmp_path / "meta" / "results.json"))
    assert results["num_train"] == 200 and np.isfinite(results["history"]["meta_clid"][0])
    with np.load(os.path.join(smoke_run[0], "split.npz")) as a, \
            np.load(tmp_path / "meta" / "split.npz") as b:
        for key in ("train_indices", "noisy_labels", "meta_indices", "unlabeled_indices"):
            np.testing.assert_array_equal(a[key], b[key])


def test_plain_fixmatch_is_the_method_ce(tmp_path):
    proc = run_cli(f"--workdir={tmp_path / 'plain'}", "--trainer=fixmatch", "--method=ce",
                   "--num_labels=200", "--batch_size=16", "--uratio=2", "--eval_every=10",
                   "--epochs=1", "--verbose=0", "--export=last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(tmp_path / "plain" / "results.json"))
    assert "meta_clid" not in results["history"] and "weight_mean" not in results["history"]
    assert np.isfinite(results["history"]["loss_unsup"][0])
    assert np.isfinite(results["history"]["meta_set_clid"][0])  # label-free selection too
    assert (tmp_path / "plain" / "saved_model" / "saved_model.pb").exists()


def test_kill_then_resume_gives_the_same_flexmatch_run(tmp_path):
    run = ["--trainer=flexmatch", "--num_labels=200", "--noise=sym_exact", "--batch_size=16",
           "--uratio=2", "--meta_size=200", "--meta_batch_size=32", "--eval_every=6",
           "--epochs=3", "--warmup_epochs=1", "--verbose=0", "--export=none", "--resume",
           "--deterministic"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli(f"--workdir={straight}", *run).returncode == 0
    command = ["python", "-m", "clid_tf.train", f"--workdir={killed}", *run]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "ckpt-1.index"  # killed in evaluation 2 (meta phase)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the run never reached evaluation 1"
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "killed too late: the run had finished"
    resumed = run_cli(f"--workdir={killed}", *run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after evaluation" in resumed.stdout
    a, b = (json.load(open(d / "results.json")) for d in (straight, killed))
    for r in (a, b):
        del r["train_seconds"], r["flags"]["workdir"]
    assert a == b
    assert np.all(np.isfinite(a["history"]["threshold_mean"]))
    readers = [tf.train.load_checkpoint(str(d / "checkpoints")) for d in (straight, killed)]
    names = [n for n in readers[0].get_variable_to_shape_map() if "OBJECT_GRAPH" not in n]
    assert any("ema_backbone" in n for n in names) and any("selected_label" in n
                                                           for n in names)
    for name in names:
        np.testing.assert_array_equal(readers[0].get_tensor(name),
                                      readers[1].get_tensor(name), err_msg=name)
