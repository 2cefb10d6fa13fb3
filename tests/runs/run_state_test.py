"""Tests for clid_tf.runs.callbacks.RunState: each epoch's checkpoint is verified when
read, and a resume falls back from damaged epochs to the newest intact one."""

import glob
import os

import keras
import numpy as np
import pytest

from clid_tf.errors import RunError
from clid_tf.runs import callbacks
from clid_tf.trainers.meta import model as meta_model
from tests.helpers import small_models


def _model(seed):
    model = meta_model.MetaReweightModel(small_models.tiny_classifier(seed=seed),
                                         small_models.weight_net(seed))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.optimizers.Adam(1e-3))
    return model


@pytest.fixture
def saved(tmp_path):
    """Three epochs saved by RunState, the weights after each (epoch -> kernel)."""
    model = _model(0)
    state = callbacks.RunState(str(tmp_path), model)
    kernels = {}
    for epoch in range(3):
        kernel = model.backbone.trainable_variables[0]
        kernel.assign(kernel + 1.0)  # each epoch's weights differ
        state.on_epoch_end(epoch, {"loss": float(epoch)})
        kernels[epoch + 1] = np.array(kernel)
    return tmp_path, kernels


def _resume(directory, capsys=None):
    model = _model(1)
    epoch = callbacks.RunState(str(directory), model).restore()
    note = capsys.readouterr().out if capsys is not None else ""
    return epoch, np.array(model.backbone.trainable_variables[0]), note


def test_the_newest_intact_epoch_is_restored(saved):
    directory, kernels = saved
    epoch, kernel, _ = _resume(directory)
    assert epoch == 3
    np.testing.assert_array_equal(kernel, kernels[3])


@pytest.mark.parametrize("damage, reason", [
    ("flip", "does not match its checksum"),
    ("truncate", "does not match its checksum"),
    ("delete_state", "state file is missing"),
    ("truncate_state", "state file is unreadable"),
    ("delete_data", "is missing"),
])
def test_a_damaged_newest_epoch_falls_back_to_the_one_before(saved, capsys, damage, reason):
    directory, kernels = saved
    data = glob.glob(str(directory / "ckpt-3.data-*"))[0]
    state = str(directory / "state-3.npz")
    if damage == "flip":
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0xFF
        open(data, "wb").write(bytes(raw))
    elif damage == "truncate":
        os.truncate(data, os.path.getsize(data) // 2)
    elif damage == "delete_state":
        os.remove(state)
    elif damage == "truncate_state":
        os.truncate(state, 100)
    else:
        os.remove(data)
    epoch, kernel, note = _resume(directory, capsys)
    assert epoch == 2
    np.testing.assert_array_equal(kernel, kernels[2])
    assert "skipped the damaged checkpoint of epoch 3" in note and reason in note, note
    assert not glob.glob(str(directory / "ckpt-3.*"))  # the damaged epoch is gone
    assert open(directory / "checkpoint").read().count("ckpt-2") >= 1


def test_no_intact_epoch_is_one_error_naming_each(saved):
    directory, _ = saved
    for path in glob.glob(str(directory / "state-*.npz")):
        os.truncate(path, 10)
    with pytest.raises(RunError, match=r"no intact checkpoint .*epoch 3: .*epoch 2: .*epoch 1:"):
        _resume(directory)


def test_no_checkpoint_at_all_starts_at_epoch_zero(tmp_path):
    assert _resume(tmp_path)[0] == 0
