"""Tests for clid_tf.cli.failures: each failure during a run as one line that says what was
kept and how to continue."""

import errno
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.cli import failures
from clid_tf.data import image_files
from clid_tf.data.inputs import FileInputs
from clid_tf.runs import folder as run_folder
from tests.helpers import images as image_helpers


@pytest.fixture
def folder(tmp_path):
    """A run folder with the complete epochs 1 and 2 and a leftover temporary file."""
    run = run_folder.RunFolder(str(tmp_path / "run"))
    os.makedirs(run.checkpoints)
    for epoch in (1, 2):
        open(os.path.join(run.checkpoints, f"state-{epoch}.npz"), "w").close()
    open(os.path.join(run.checkpoints, "state-3.npz.tmp"), "w").close()
    return run


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    (OSError(errno.ENOENT, "No such file or directory", "/x/run/checkpoints/state-3.npz"),
     "its folder was removed"),
    (tf.errors.ResourceExhaustedError(None, None, "write failed: No space left on device"),
     "No space left on device"),
    (tf.errors.UnknownError(None, None, "RUN/checkpoints/ckpt-3_temp; Read-only file system"),
     "Read-only file system"),
])
def test_write_failures_say_what_was_kept_and_leave_no_temporary_file(folder, error, reason):
    if isinstance(error, OSError) and error.filename:
        error = OSError(error.errno, error.strerror, os.path.join(folder.path, "x"))
    if isinstance(error, tf.errors.OpError):
        error = type(error)(None, None, error.message.replace("RUN", folder.path))
    line = failures.one_line(error, folder)
    assert line.startswith(f"could not write to {folder.path} ({reason}"), line
    assert "the checkpoint of epoch 2 is kept" in line and "--resume" in line
    assert not os.path.exists(os.path.join(folder.checkpoints, "state-3.npz.tmp"))


def test_a_data_file_that_vanished_is_named(folder, tmp_path):
    gone = str(tmp_path / "data" / "cat" / "7.png")
    error = tf.errors.NotFoundError(None, None, f"{gone}; No such file or directory")
    line = failures.one_line(error, folder)
    assert line.startswith(f"the file {gone} was not found;"), line
    assert line.endswith("put it back and rerun the same command with --resume"), line


def test_a_bug_keeps_its_traceback(folder, tmp_path):
    assert failures.one_line(ValueError("a bug"), folder) is None
    assert failures.one_line(OSError(errno.ENOSPC, "full"), None) is None
    # not a write of the run's: memory, or an input that cannot be read
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    assert failures.one_line(oom, folder) is None
    unreadable = str(tmp_path / "data" / "cat" / "1.png")
    assert failures.one_line(tf.errors.PermissionDeniedError(
        None, None, f"{unreadable}; Permission denied"), folder) is None
    assert failures.one_line(OSError(errno.EACCES, "Permission denied", unreadable),
                             folder) is None


def test_the_advice_fits_what_is_left(folder):
    full = OSError(errno.ENOSPC, "No space left on device")
    open(folder.results_path, "w").close()  # the run finished; its --audit failed
    line = failures.one_line(full, folder)
    assert "the run finished and its results are kept" in line, line
    assert line.endswith(f"run python -m clid_tf.audit --workdir={folder.path} again"), line
    gone = run_folder.RunFolder(folder.path + "-removed")
    line = failures.one_line(OSError(errno.ENOENT, "No such file or directory",
                                     os.path.join(gone.path, "x")), gone)
    assert "the run folder is gone, so nothing of the run is left" in line, line


def _corrupt_setup(tmp_path):
    root = str(tmp_path / "images")
    paths = image_helpers.write_tree(root, {"cat": 3, "dog": 3}, shape=(8, 8, 3))
    victim = paths[4]
    raw = bytearray(open(victim, "rb").read())
    start = raw.find(b"IDAT") + 8  # inside the pixels: the header check does not see it
    raw[start:start + 10] = bytes(b ^ 0xFF for b in raw[start:start + 10])
    open(victim, "wb").write(bytes(raw))
    files = image_files.folder_splits(root)["train"]
    split = types.SimpleNamespace(inputs=FileInputs(files, (8, 8, 3)), labels=files.labels)
    dataset = types.SimpleNamespace(train=split, val=None, test=None)
    return types.SimpleNamespace(dataset=dataset), root, os.path.relpath(victim, root)


def test_a_corrupt_image_is_named_with_how_to_continue(tmp_path, folder):
    setup, root, victim = _corrupt_setup(tmp_path)
    error = tf.errors.InvalidArgumentError(None, None, "Invalid PNG data, size 733")
    line = failures.one_line(error, folder, setup)
    assert f"the image file {victim} (under {root}) cannot be decoded" in line, line
    assert "the checkpoint of epoch 2 is kept" in line
    assert "replace it with a good copy and rerun the same command with --resume" in line
    assert "removing it changes the data" in line
    fresh = run_folder.RunFolder(str(tmp_path / "fresh"))
    os.makedirs(fresh.path)
    line = failures.one_line(error, fresh, setup)
    assert "no epoch had finished, so nothing of the run was kept" in line, line
    assert "--resume" not in line


def test_first_undecodable_finds_the_file_pillow_cannot_read(tmp_path):
    setup, root, victim = _corrupt_setup(tmp_path)
    files = setup.dataset.train.inputs.files
    position, reason = image_files.first_undecodable(files.paths)
    assert files.names()[position] == victim and reason
    assert image_files.first_undecodable(np.delete(files.paths, position)) is None
