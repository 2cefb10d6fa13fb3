"""Tests for clid_tf.runs.folder and clid_tf.runs.lock: one writer per folder (a real
second process), what a folder may hold, the inputs' fingerprints on resume, an audit's
place, and what an interrupted write leaves."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clid_tf import atomic_io
from clid_tf.data.inputs import ArrayInputs, FileInputs
from clid_tf.data import image_files
from clid_tf.runs import folder as run_folder
from clid_tf.runs import lock as run_lock
from tests.helpers import ROOT
from tests.helpers import images as image_helpers

HOLDER = textwrap.dedent("""
    import sys, time
    from clid_tf.runs import lock
    held = lock.RunLock(sys.argv[1])
    held.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """)


@pytest.fixture
def other_process(tmp_path):
    """A second process that holds the lock of tmp_path/run until killed (-9)."""
    os.makedirs(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_it(
        tmp_path, other_process):
    folder = run_folder.RunFolder(str(tmp_path / "run"))
    with pytest.raises(run_folder.FolderError, match=rf"in use by pid {other_process.pid} "
                                                      r"\(.*, since .*\): one process"):
        folder.lock()
    with pytest.raises(run_folder.FolderError, match="in use by"):
        run_folder.RunFolder(str(tmp_path / "run")).create(allow_partial=True)
    other_process.send_signal(signal.SIGKILL)
    other_process.wait()
    folder.lock()  # the OS released the dead holder's lock: nothing stale
    assert folder._lock.held  # pylint: disable=protected-access


def test_create_tells_an_earlier_run_from_other_files(tmp_path):
    earlier = tmp_path / "earlier"
    os.makedirs(earlier / "checkpoints")
    with pytest.raises(run_folder.FolderError, match="holds an earlier run"):
        run_folder.RunFolder(str(earlier)).create()
    other = tmp_path / "other"
    os.makedirs(other)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(run_folder.FolderError, match=r"not a training run's \(notes.txt\)"):
        run_folder.RunFolder(str(other)).create(allow_partial=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_an_audit_never_writes_an_unfinished_runs_results(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path))
    with pytest.raises(run_folder.FolderError, match="has not finished"):
        folder.merge_results("audit", {"x": 1})
    assert not folder.is_complete()
    folder.write_results({"final": 0.9})
    folder.merge_results("audit", {"x": 1})
    assert folder.read_results() == {"final": 0.9, "audit": {"x": 1}}


def _dataset(train_x, test_x, labels=np.array([0, 1, 0, 1])):
    class Split:
        def __init__(self, inputs, y):
            self.inputs, self.labels = inputs, y

    class Data:
        train = Split(train_x, labels)
        val = None
        test = Split(test_x, labels[:2])

    return Data()


def test_changed_inputs_are_refused_by_name(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path))
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    saved = run_folder.input_fingerprints(_dataset(ArrayInputs(x), ArrayInputs(x[:2])))
    folder.save_split({"noisy_labels": np.array([0, 1, 0, 1]), **saved})
    same = run_folder.input_fingerprints(_dataset(ArrayInputs(x.copy()), ArrayInputs(x[:2])))
    assert folder.check_split({"noisy_labels": np.array([0, 1, 0, 1]), **same}) == []
    cases = [
        (_dataset(ArrayInputs(np.zeros_like(x)), ArrayInputs(x[:2])), "training inputs"),
        (_dataset(ArrayInputs(x), ArrayInputs(x[:1])), "test inputs"),
        (_dataset(ArrayInputs(x), ArrayInputs(x[:2]), np.array([0, 1, 1, 1])),
         "training labels"),
    ]
    for data, what in cases:
        with pytest.raises(run_folder.FolderError, match=f"the {what} changed since the run"):
            folder.check_split({"noisy_labels": np.array([0, 1, 0, 1]),
                                **run_folder.input_fingerprints(data)})
    with pytest.raises(run_folder.FolderError, match="noisy training labels differ"):
        folder.check_split({"noisy_labels": np.array([1, 1, 0, 1]), **saved})


def test_a_replaced_image_file_is_named_and_resumes(tmp_path):
    """Image files: other names refuse the resume; a file replaced in place (a corrupt
    one swapped for a good copy) is named in a note and the resume goes on."""
    root = tmp_path / "images"
    image_helpers.write_tree(str(root), {"a": 3, "b": 3}, shape=(8, 8, 3))
    files = image_files.folder_splits(str(root))["train"]
    inputs = FileInputs(files, (8, 8, 3))
    folder = run_folder.RunFolder(str(tmp_path / "run"))
    os.makedirs(folder.path)
    folder.save_split(run_folder.input_fingerprints(_dataset(inputs, inputs, files.labels)))
    victim = files.paths[1]
    time.sleep(0.01)
    with open(victim, "ab") as f:
        f.write(b"\0")
    notes = folder.check_split(run_folder.input_fingerprints(
        _dataset(inputs, inputs, files.labels)))
    assert len(notes) == 2 and all("1 train" in n or "1 test" in n for n in notes), notes
    assert os.path.relpath(victim, root) in notes[0]
    fewer = FileInputs(files.select(np.arange(len(files.paths)) != 0), (8, 8, 3))
    with pytest.raises(run_folder.FolderError, match="training inputs changed"):
        folder.check_split(run_folder.input_fingerprints(
            _dataset(fewer, inputs, files.labels[1:])))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "state.json")
    atomic_io.write_json(path, {"epoch": 1})
    with pytest.raises(OSError):
        with atomic_io.open_atomic(path) as f:
            f.write("partial")
            raise OSError(28, "No space left on device")
    assert open(path).read() == '{\n  "epoch": 1\n}'
    assert os.listdir(tmp_path) == ["state.json"]
    with pytest.raises(OSError):  # a real ENOSPC from the kernel: /dev/full
        with open("/dev/full", "w") as f:
            f.write("x" * 10000)
            f.flush()


def test_temporary_files_of_an_interrupted_write_are_removed(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints" / "ckpt-3_temp")
    (tmp_path / "checkpoints" / "state-3.npz.tmp").write_text("x")
    (tmp_path / "checkpoints" / "state-2.npz").write_text("x")
    (tmp_path / "saved_model.tmp").mkdir()
    removed = folder.remove_temporary_files()
    assert len(removed) == 3
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["state-2.npz"]
    assert folder.last_epoch() == 2


def test_a_failed_start_leaves_an_existing_empty_folder_empty(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path))
    folder.create()
    assert os.listdir(tmp_path) == [run_lock.LOCK_NAME]  # held while the run starts
    with pytest.raises(RuntimeError):
        with folder.removed_on_failure():
            (tmp_path / "flags.cfg").write_text("--epochs=3\n")
            raise RuntimeError("the data could not be read")
    assert os.listdir(tmp_path) == []


def test_a_resumed_start_removes_what_a_kill_mid_write_left(tmp_path):
    (tmp_path / "flags.cfg.tmp").write_text("--epo")  # killed while writing its flags
    folder = run_folder.RunFolder(str(tmp_path))
    folder.create(allow_partial=True)
    assert sorted(os.listdir(tmp_path)) == [run_lock.LOCK_NAME]


def test_the_audit_scores_only_epochs_whose_state_was_written(tmp_path):
    folder = run_folder.RunFolder(str(tmp_path))
    os.makedirs(folder.checkpoints)
    import hashlib, json  # pylint: disable=import-outside-toplevel,multiple-imports
    for epoch in (1, 2, 3, 4):
        (tmp_path / "checkpoints" / f"ckpt-{epoch}.index").write_text(f"epoch {epoch}")
    for epoch in (1, 2, 4):  # epoch 3 was killed before its state file
        digest = hashlib.sha256(f"epoch {epoch}".encode()).hexdigest()
        np.savez(tmp_path / "checkpoints" / f"state-{epoch}.npz",
                 checksums=np.asarray(json.dumps({f"ckpt-{epoch}.index": digest})))
    (tmp_path / "checkpoints" / "ckpt-4.index").write_text("damaged")  # no longer its checksum
    assert [run_folder.checkpoint_epoch(p) for p in folder.checkpoint_paths()] == [1, 2]
