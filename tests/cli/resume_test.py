"""Operations: kill -9 and resume, determinism, and the NaN guard, through the real CLI."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import ROOT

RUN = ["--epochs=5", "--warmup_epochs=2", "--steps_per_epoch=6", "--meta_size=100",
       "--verbose=0", "--export=none", "--resume", "--deterministic"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _command(workdir, *extra):
    return [sys.executable, "-m", "clid_tf.train", f"--workdir={workdir}", *RUN, *extra]


def _run(workdir, *extra):
    proc = subprocess.run(_command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    return proc


def _results(workdir):
    results = json.load(open(os.path.join(workdir, "results.json")))
    del results["train_seconds"]
    del results["flags"]["workdir"]
    return results


def _weights(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n]
    assert any("backbone" in n for n in names) and any("meta_net" in n for n in names)
    return {n: reader.get_tensor(n) for n in names}


def _assert_same_run(a, b):
    assert _results(a) == _results(b)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_kill_mid_epoch_then_same_command_resumes_to_the_same_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(straight).returncode == 0
    # Start the same run, kill -9 it during epoch 4 (meta phase), run the command again.
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "ckpt-3.index"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the run never reached epoch 3"
    time.sleep(0.15)  # into epoch 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "killed too late: the run had finished"
    resumed = _run(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    # (the killed run's epochs 1-3 ran from scratch: equal to the straight run's, so the
    # same command twice gives identical results.json and weights, --deterministic)
    _assert_same_run(straight, killed)


def _kill_after_epoch(workdir, epoch, *extra):
    """Starts the run, kills it (-9) a moment into epoch `epoch` + 1."""
    proc = subprocess.Popen(_command(workdir, *extra), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = workdir / "checkpoints" / f"ckpt-{epoch}.index"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), f"the run never reached epoch {epoch}"
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "results.json").exists(), "killed too late: the run had finished"


# vri_single with everything that changes by epoch: Adam re-zeroed every epoch, a training
# subset and a meta set re-drawn every epoch.
VRI_SINGLE = ["--trainer=vri_single", "--optimizer=adam", "--lr=1e-3",
              "--lr_schedule=constant", "--reset_optimizer_each_epoch", "--train_subset=1000",
              "--resample_subset_each_epoch", "--redraw_meta_each_epoch", "--epochs=4",
              "--warmup_epochs=1"]


@pytest.mark.slow  # the same adapter's resume: test_kill_mid_epoch_then_same_command_resumes...
def test_a_killed_vri_single_run_resumes_to_the_same_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(straight, *VRI_SINGLE).returncode == 0
    _kill_after_epoch(killed, 2, *VRI_SINGLE)
    resumed = _run(killed, *VRI_SINGLE)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    _assert_same_run(straight, killed)
    results = _results(straight)
    assert results["virtual_step"] == "optimizer" and results["num_train"] < 1437


def test_resume_refuses_changed_flags_and_finished_runs(tmp_path):
    workdir = tmp_path / "run"
    assert _run(workdir, "--epochs=1", "--warmup_epochs=1").returncode == 0
    os.remove(workdir / "results.json")
    proc = _run(workdir, "--epochs=1", "--warmup_epochs=1", "--lr=0.1")
    assert proc.returncode == 2 and "flags differ" in proc.stderr and "--lr" in proc.stderr
    assert _run(workdir, "--epochs=1", "--warmup_epochs=1").returncode == 0
    proc = _run(workdir, "--epochs=1", "--warmup_epochs=1")
    assert proc.returncode == 2 and "complete" in proc.stderr


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    # Epoch 1 trains normally; from epoch 2 the learning rate explodes.
    proc = _run(workdir, "--epochs=3", "--warmup_epochs=1", "--lr_schedule=multistep",
                "--lr_milestones=1", "--lr_gamma=1e7")
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    match = re.search(r"non-finite .+ at (?:the end of )?epoch (\d+)", lines[0])
    assert match, lines[0]
    epoch = int(match.group(1))
    assert epoch >= 2  # the fault came after the learning rate exploded
    assert "Traceback" not in proc.stderr
    assert not (workdir / "results.json").exists()
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest.endswith(f"ckpt-{epoch - 1}") and f"epoch {epoch - 1}) is kept" in lines[0]
    for name, value in _weights(workdir).items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


FIXTURE = os.path.join(ROOT, "tests", "fixtures", "run_before_layout")


def test_a_run_folder_written_before_the_package_layout_resumes_exactly(tmp_path):
    """tests/fixtures/run_before_layout is a digits run (3 epochs of 8 steps, WNet + CLID,
    --deterministic) that the code before the package layout wrote and that was killed after
    its epoch-2 checkpoint (only that checkpoint kept; uninterrupted.json holds what the
    uninterrupted run reported). The moved code resumes it after epoch 2 and ends where the
    uninterrupted run ended."""
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE, workdir)
    expected = json.loads((workdir / "uninterrupted.json").read_text())
    (workdir / "uninterrupted.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "clid_tf.train",
                           f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}",
                           "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch 2 of 3" in proc.stdout
    results = json.load(open(workdir / "results.json"))
    history = results["history"]
    for key in ("test_accuracy", "loss", "meta_set_clid"):  # epochs 1-2: restored as saved
        np.testing.assert_array_equal(history[key][:2], expected["history"][key][:2])
    # epoch 3: trained again by the new code from the restored state (the same ops; a
    # different CPU may round differently)
    np.testing.assert_allclose(history["loss"][2], expected["history"]["loss"][2], rtol=1e-4)
    assert abs(results["final_test_accuracy"] - expected["final_test_accuracy"]) <= 2 / 360
    assert results["selected_epoch"] == expected["selected_epoch"]
    assert os.path.exists(workdir / "checkpoints" / "ckpt-3.index")
