"""--trainer=dividemix through the real CLI on digits: a smoke run (results,
division, loss terms, TensorBoard, the served ensemble, the in-sample audit), plain
DivideMix, and exact resume after kill -9."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.data.sources.digits import load_digits
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, scalars

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
SMALL = ["--trainer=dividemix", "--backbone=mlp", "--batch_size=32", "--meta_size=100",
         "--lr=0.02", "--lambda_u=25", "--verbose=0"]


def _mlp(data):
    return backbones.build("mlp", num_classes=10, input_shape=(8, 8, 1), mean=data.mean,
                           std=data.std)


def _served(path, images):
    model = tf.saved_model.load(path)
    return model.signatures["serving_default"](images=tf.constant(images))[
        "probabilities"].numpy()


def _softmax(z):
    return tf.nn.softmax(z).numpy()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Digits, 40% symmetric noise, 2 MLPs, batch 32 per part, 3 warm-up + 5 DivideMix +
    VRI + CLID epochs; the merged top-5 exported; audited in sample."""
    workdir = str(tmp_path_factory.mktemp("dividemix") / "run")
    proc = run_cli(f"--workdir={workdir}", *SMALL, "--meta_net=vri", "--method=clid",
                   "--epochs=8", "--warmup_epochs=3", "--export=ensemble", "--audit",
                   "--audit_folds=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, json.load(open(os.path.join(workdir, "results.json"))), proc


def test_smoke_run_trains_both_networks_and_reports_the_division(smoke_run):
    workdir, results, proc = smoke_run
    history = results["history"]
    assert all(np.isfinite(history["loss"])) and len(history["loss"]) == 8
    for k in (1, 2):
        for term in ("l_x", "l_u", "penalty", "lambda_u", "meta_clid", "meta_regularizer"):
            values = history[f"net{k}_{term}"]
            assert values[:3] == [None] * 3, term  # warm-up: CE only
            assert all(np.isfinite(values[3:])), (term, values)
        labeled = np.array(history[f"net{k}_labeled"][3:]) / results["num_train"]
        assert ((0.2 < labeled) & (labeled < 0.95)).all(), labeled
        assert all(0.5 < p <= 1 for p in history[f"net{k}_labeled_precision"][3:])
        assert all(0 < r <= 1 for r in history[f"net{k}_labeled_recall"][3:])
        assert len(history[f"net{k}_test_accuracy"]) == 8  # each network alone
        # the learning rate anneals to the end: each network selects its last epoch
        assert np.all(np.diff(history[f"net{k}_lr"]) < 0)
        assert results[f"net{k}"]["selected_epoch"] == 8
    ramp = history["net1_lambda_u"][3:]  # 25 * (t - 3) / 16 at the epochs' mid-points
    np.testing.assert_allclose(ramp, [25 * (e + 0.5) / 16 for e in range(5)], rtol=0.1)
    assert len(history["test_accuracy"]) == 8  # the two networks' summed logits
    for key in ("final_test_accuracy", "best_test_accuracy", "selected_accuracy",
                "merged_selected_accuracy", "ensemble3_accuracy", "ensemble5_accuracy"):
        assert 0.5 < results[key] <= 1.0, key
    assert results["final_test_accuracy"] == history["test_accuracy"][-1]
    assert results["kept"][0]["net"] == results["selected_net"]
    scores = [entry["meta_clid"] for entry in results["kept"]]
    assert scores == sorted(scores) and len(scores) == 2  # both pools, one epoch each
    # the warm-up's plain-CE epochs 1-3 are scored but never kept; of the others only the
    # last, at the lowest learning rate
    assert results["eligible_epochs"] == [8]
    assert sorted(entry["epoch"] for entry in results["kept"]) == [8, 8]
    assert "test accuracy: final" in proc.stdout


def test_tensorboard_holds_the_division_and_loss_terms(smoke_run):
    workdir, results, _ = smoke_run
    found = scalars(os.path.join(workdir, "tensorboard", "train"))
    for tag in ("epoch_test_accuracy", "epoch_net1_test_accuracy", "epoch_net2_meta_set_clid",
                "epoch_selected_accuracy", "epoch_ensemble5_accuracy"):
        assert len(found[tag]) == (5 if "selected" in tag or "ensemble" in tag else 8), tag
    for tag in ("epoch_net1_labeled", "epoch_net2_labeled_precision", "epoch_net1_l_u",
                "epoch_net2_penalty", "epoch_net1_lambda_u", "epoch_meta_clid"):
        assert len(found[tag]) == 5, tag
    np.testing.assert_allclose(found["epoch_net1_labeled"],
                               results["history"]["net1_labeled"][3:])


def test_the_ensemble_export_serves_the_merged_top_5(smoke_run):
    """--export=ensemble: the 5 lowest-CLID (network, epoch) entries of both pools, their
    logits averaged (the argmax is that of the summed logits)."""
    workdir, results, _ = smoke_run
    data = load_digits()
    images = data.test.inputs.array[:32]
    logits = []
    for entry in results["kept"][:5]:
        net = _mlp(data)
        with np.load(os.path.join(workdir, "checkpoints", "selected",
                                  f"net{entry['net']}_epoch-{entry['epoch']}.npz")) as saved:
            net.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        logits.append(net(images.astype(np.float32), training=False)[0].numpy())
    np.testing.assert_allclose(_served(os.path.join(workdir, "saved_model"), images),
                               _softmax(np.mean(logits, axis=0)), rtol=1e-5, atol=1e-6)


def test_the_in_sample_audit_scores_with_both_networks(smoke_run):
    workdir, _, _ = smoke_run
    audit = json.load(open(os.path.join(workdir, "results.json")))["audit"]
    assert audit["folds"] == 0 and not audit["has_meta_net"]
    assert audit["roc_auc"] > 0.9 and os.path.isfile(os.path.join(workdir, "audit.csv"))


# covered by trainers/dividemix/model_test.py (WNet weighting each MixMatch row, its
# hypergradient against central differences) and this file's kill-and-resume run
@pytest.mark.slow
def test_dividemix_with_wnet_trains_and_resumes_through_the_command_line(tmp_path):
    """Any registered meta-net whose weighted_loss takes the MixMatch rows: WNet + CLID
    weights each row's term; a resume restores it (WNet has no noise state)."""
    workdir = tmp_path / "wnet"
    args = [f"--workdir={workdir}", *SMALL, "--meta_net=wnet", "--method=clid",
            "--epochs=3", "--warmup_epochs=1", "--steps_per_epoch=6", "--export=none"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer dividemix, method clid, meta-net wnet" in proc.stdout
    results = json.load(open(workdir / "results.json"))
    history = results["history"]
    assert results["flags"]["meta_net"] == "wnet"  # the value the trainer read
    for k in (1, 2):
        assert all(np.isfinite(history[f"net{k}_meta_clid"][1:]))
        assert history[f"net{k}_meta_regularizer"][1:] == [0.0, 0.0]  # WNet has none
    os.remove(workdir / "results.json")  # killed after its last checkpoint
    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after epoch 3 of 3" in again.stdout


@pytest.mark.slow  # covered by test_the_ensemble_export_serves_the_merged_top_5 (export) and the Python API plain DivideMix fit
def test_plain_dividemix_serves_the_two_final_networks(tmp_path):
    workdir = tmp_path / "plain"
    proc = run_cli(f"--workdir={workdir}", *SMALL, "--method=ce", "--epochs=2",
                   "--warmup_epochs=1", "--steps_per_epoch=5", "--export=last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer dividemix, method ce, meta-net none" in proc.stdout
    results = json.load(open(workdir / "results.json"))
    history = results["history"]
    assert "meta_clid" not in history and "net1_meta_regularizer" not in history
    assert np.isfinite(history["net2_l_x"][1]) and history["net1_labeled"][0] is None
    assert len(history["net1_meta_set_clid"]) == 2  # selection runs without a meta-net
    data = load_digits()
    nets = [_mlp(data), _mlp(data)]
    tf.train.Checkpoint(backbone1=nets[0], backbone2=nets[1]).restore(
        tf.train.latest_checkpoint(str(workdir / "checkpoints"))).expect_partial()
    images = data.test.inputs.array[:16]
    mean = np.mean([n(images.astype(np.float32), training=False)[0] for n in nets], axis=0)
    np.testing.assert_allclose(_served(str(workdir / "saved_model"), images), _softmax(mean),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- resume
RESUMED = [*SMALL, "--meta_net=vri", "--method=clid", "--epochs=3", "--warmup_epochs=1",
           "--steps_per_epoch=5", "--export=none", "--resume", "--deterministic"]


def _command(workdir):
    return [sys.executable, "-m", "clid_tf.train", f"--workdir={workdir}", *RESUMED]


def _state(workdir):
    results = json.load(open(os.path.join(workdir, "results.json")))
    del results["train_seconds"], results["flags"]["workdir"]
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n]
    for part in ("backbone1", "backbone2", "meta_net1", "meta_net2", "optimizer1",
                 "optimizer2", "meta_optimizer1", "meta_optimizer2"):
        # (callbacks.checkpoint_of saves each network's variables once more as one list)
        assert any(n.startswith((part + "/", part + "_variables/")) for n in names), part
    return results, {n: reader.get_tensor(n) for n in names}


def test_kill_mid_epoch_then_the_same_command_resumes_to_the_same_run(tmp_path):
    """Both networks, both meta-nets, all four optimizers, both selections and the epoch's
    division come back: the resumed run equals an uninterrupted one bit for bit."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_command(straight), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "ckpt-2.index"  # one DivideMix epoch done
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the run never finished epoch 2"
    time.sleep(0.3)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "killed too late: the run had finished"
    resumed = subprocess.run(_command(killed), cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    (want, want_weights), (got, got_weights) = _state(straight), _state(killed)
    assert got == want
    assert got_weights.keys() == want_weights.keys()
    for name in want_weights:
        np.testing.assert_array_equal(got_weights[name], want_weights[name], err_msg=name)
    # epoch 3's lower learning rate dropped epoch 2 from the pool, and its weights (the
    # warm-up's epoch 1 is never selected)
    assert [os.path.basename(p) for p in glob.glob(
        str(killed / "checkpoints" / "selected" / "net2_epoch-*.npz"))] == ["net2_epoch-3.npz"]


@pytest.mark.slow  # covered by the shared guard and run state: resume_test.py::test_non_finite_loss_stops_with_step...
def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    proc = run_cli(f"--workdir={workdir}", *SMALL, "--meta_net=vri", "--method=clid",
                   "--epochs=3", "--warmup_epochs=1", "--steps_per_epoch=3",
                   "--lr_schedule=multistep", "--lr_milestones=1", "--lr_gamma=1e7")
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "non-finite" in lines[0] and "Traceback" not in proc.stderr
    assert "epoch 1) is kept" in lines[0] and not (workdir / "results.json").exists()
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-1")
