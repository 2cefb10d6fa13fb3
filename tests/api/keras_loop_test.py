"""The training loop where Keras users expect Keras' own: train_on_batch, epochs of one
pass with a last partial batch, a batch larger than the data, and every metric in every
epoch's logs (History, CSVLogger, pandas)."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

import clid_tf
from tests.helpers import keras_users as users

X, Y, _ = users.digits(600)


def _model(meta_net=True, seed=0):
    model = clid_tf.MetaReweightModel(users.functional(seed),
                                      clid_tf.WeightNet() if meta_net else None)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.optimizers.Adam(1e-3) if meta_net else None)
    return model


class _Steps(keras.callbacks.Callback):
    """Training steps per epoch, and the batch sizes a step saw."""

    def on_epoch_begin(self, epoch, logs=None):
        self.count = getattr(self, "count", []) + [0]

    def on_train_batch_end(self, batch, logs=None):
        self.count[-1] += 1


def test_arrays_make_keras_epochs_with_a_last_partial_batch():
    """1500 samples at batch 64: 24 steps an epoch, as Keras' fit (the last of 28); a batch
    larger than the data is one step of all of it."""
    x, y, _ = users.digits(1500)
    ours, theirs = _Steps(), _Steps()
    _model().fit(x, y, batch_size=64, epochs=2, meta_size=200, verbose=0, callbacks=[ours])
    plain = users.functional()
    plain.compile("sgd", "sparse_categorical_crossentropy")
    plain.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[theirs])
    assert ours.count == theirs.count == [24, 24]
    small = _Steps()
    _model().fit(X[:50], Y[:50], batch_size=64, epochs=1, meta_size=20, meta_batch_size=10,
                 verbose=0, callbacks=[small])
    assert small.count == [1]


def test_every_metric_has_a_value_in_every_epoch(tmp_path):
    """A warm-up holds the meta step for 2 epochs: the meta loss and lr are NaN there, so
    every History list has 4 values (what pandas needs for a DataFrame) and CSVLogger, which
    takes its columns from the first epoch, keeps the meta column."""
    path = tmp_path / "log.csv"
    history = _model().fit(X, Y, batch_size=64, epochs=4, meta_size=100, verbose=0,
                           callbacks=[clid_tf.WarmUp(2), keras.callbacks.CSVLogger(str(path))])
    lengths = {name: len(values) for name, values in history.history.items()}
    assert set(lengths.values()) == {4}, lengths
    meta = history.history["meta_clid"]
    assert np.isnan(meta[:2]).all() and np.isfinite(meta[2:]).all()
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 4 and rows[0]["meta_clid"] == "nan" and float(rows[3]["meta_clid"]) > 0


def test_train_on_batch_takes_one_step_as_keras_does():
    """One step on the batch (its meta step on a meta batch of the last fit's meta set,
    or of the batch itself): the weights move, the metrics come back as a dict or a list;
    DivideMix and FixMatch say in one line why they have no step of one batch."""
    model = _model()
    before = [np.array(v) for v in model.backbone.trainable_variables]
    logs = model.train_on_batch(X[:64], Y[:64], return_dict=True)
    assert set(logs) >= {"loss", "meta_clid", "accuracy"} and np.isfinite(logs["meta_clid"])
    assert any(not np.allclose(a, np.array(b)) for a, b in
               zip(before, model.backbone.trainable_variables))
    assert len(model.train_on_batch(X[:64], Y[:64], sample_weight=np.ones(64))) == len(logs)
    plain = _model(meta_net=False)
    assert "meta_clid" not in plain.train_on_batch(X[:32], Y[:32], return_dict=True)
    for other in (clid_tf.DivideMixModel([users.functional(0), users.functional(1)]),
                  clid_tf.FixMatchModel(users.functional(0))):
        with pytest.raises(ValueError, match="use fit"):
            other.train_on_batch(X[:32], Y[:32])


def test_divide_mix_epochs_keep_their_columns_through_the_warm_up(tmp_path):
    path = tmp_path / "dividemix.csv"
    model = clid_tf.DivideMixModel([users.functional(0), users.functional(1)],
                                   [clid_tf.VRINet(), clid_tf.VRINet()], warmup_epochs=1)
    model.compile(keras.optimizers.SGD(0.02, momentum=0.9), "adam")
    history = model.fit(X[:256], Y[:256], batch_size=32, epochs=2, meta_size=64, verbose=0,
                        callbacks=[keras.callbacks.CSVLogger(str(path))])
    assert {len(v) for v in history.history.values()} == {2}
    rows = list(csv.DictReader(open(path)))
    for name in ("net1_l_x", "net2_l_u", "meta_clid", "net1_labeled"):
        assert rows[0][name] == "nan" and np.isfinite(float(rows[1][name])), name
