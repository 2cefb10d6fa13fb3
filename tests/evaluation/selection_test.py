"""CLID model selection: meta-set CLID, the top-k logit store and the Keras callback."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.core import clid as clid_lib
from clid_tf.data import pipelines as data
from clid_tf.trainers.meta import model as meta_model
from clid_tf.evaluation import selection
from tests.helpers import small_models as helpers

NUM_CLASSES = 3
DIM = 4


def _backbone(seed=0):
    return backbones.build("mlp", num_classes=NUM_CLASSES, input_shape=(DIM,),
                           mean=(0,) * DIM, std=(1,) * DIM, seed=seed)


def _separable(n, seed):
    """Three Gaussian blobs in R^4, well apart: float32 [n, 4], int64 [n]."""
    rng = np.random.default_rng(seed)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    return (centers[labels] + rng.normal(size=(n, DIM))).astype(np.float32), labels


def _event_tags(directory):
    """Scalar tags in the TensorBoard event files under `directory`."""
    tags = set()
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"),
                          recursive=True):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(v.tag for v in event.summary.value)
    return tags


def _manual_meta_clid(backbone, images, batches, tau):
    values = []
    for idx in batches:
        logits, features = backbone(tf.constant(images[idx]), training=False)
        values.append(float(clid_lib.clid(features, logits, tau=tau)))
    sizes = np.array([len(b) for b in batches], np.float64)
    return float(np.dot(values, sizes) / sizes.sum())


# ---------------------------------------------------------------- meta-set CLID
def test_shuffled_batches_sizes_and_seed():
    batches = selection.shuffled_batches(250, batch_size=100, seed=3)
    assert [len(b) for b in batches] == [100, 100, 50]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(250))
    again = selection.shuffled_batches(250, batch_size=100, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = selection.shuffled_batches(250, batch_size=100, seed=4)
    assert not np.array_equal(batches[0], other[0])
    assert not np.array_equal(batches[0], np.arange(100))  # really shuffled


def test_shuffled_batches_drop_single_last_sample():
    batches = selection.shuffled_batches(201, batch_size=100, seed=0)
    assert [len(b) for b in batches] == [100, 100]
    with pytest.raises(ValueError):
        selection.shuffled_batches(1, batch_size=100, seed=0)
    with pytest.raises(ValueError):
        selection.shuffled_batches(10, batch_size=1, seed=0)


@pytest.mark.parametrize("n,expected_sizes", [(250, [100, 100, 50]), (201, [100, 100])])
def test_meta_set_clid_is_batch_weighted_mean(n, expected_sizes):
    backbone = _backbone()
    images, _ = _separable(n, seed=1)
    batches = selection.shuffled_batches(n, batch_size=100, seed=5)
    assert [len(b) for b in batches] == expected_sizes
    expected = _manual_meta_clid(backbone, images, batches, tau=0.5)
    got = selection.meta_set_clid(backbone, data.as_part(images), batch_size=100, tau=0.5, seed=5)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The weighting matters: an unweighted mean over batches would differ.
    if len(set(expected_sizes)) > 1:
        unweighted = np.mean([_manual_meta_clid(backbone, images, [b], 0.5) for b in batches])
        assert abs(unweighted - expected) > 1e-6
    # The compiled forward gives the same value.
    compiled = selection.inference_function(backbone)
    np.testing.assert_allclose(
        selection.meta_set_clid(compiled, data.as_part(images), batch_size=100, tau=0.5, seed=5), got,
        rtol=1e-5)


# ---------------------------------------------------------------- top-k store
def test_topk_keeps_lowest_scores_and_earlier_epoch_on_ties():
    store = selection.TopKLogits(max_size=3)
    scores = {1: 4.0, 2: 3.0, 3: 5.0, 4: 3.0, 5: 2.5, 6: float("nan"), 7: 3.0}
    kept = {e: store.update(s, e, np.full((2, 2), e, np.float32)) for e, s in scores.items()}
    assert store.best_epochs() == [5, 2, 4]
    assert store.best_epochs(1) == [5]
    assert len(store) == 3
    assert kept[6] is False and kept[7] is False  # NaN ranks last; tie loses to earlier
    assert [e.score for e in store.entries] == [2.5, 3.0, 3.0]
    with pytest.raises(ValueError):
        store.ensemble_accuracy(np.zeros(2), k=4)


def test_ensemble_sums_raw_logits_not_probabilities():
    # One confident model for class 0, two mild ones for class 1.
    confident = np.array([[8.0, 0.0]])
    mild = np.array([[0.0, 3.0]])
    labels = np.array([0])
    softmax = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    assert np.argmax(confident + 2 * mild) == 0                        # logit sum says 0
    assert np.argmax(softmax(confident) + 2 * softmax(mild)) == 1      # prob sum says 1
    store = selection.TopKLogits(max_size=5)
    store.update(1.0, 1, confident)
    store.update(2.0, 2, mild)
    store.update(3.0, 3, mild)
    store.update(9.0, 4, np.array([[0.0, 100.0]]))  # 4th-best: outside the top 3
    assert store.ensemble_accuracy(labels, k=3) == 1.0
    assert store.ensemble_accuracy(labels, k=1) == 1.0
    assert store.ensemble_accuracy(labels, k=4) == 0.0
    np.testing.assert_allclose(store.ensemble_logits(3), [[8.0, 6.0]])


# ---------------------------------------------------------------- the callback
def test_callback_logs_and_summary_consistent_with_history(tmp_path):
    keras.utils.set_random_seed(0)
    train_x, train_y = _separable(240, seed=0)
    # 30% label noise and small batches at SGD(0.1): CLID is not monotone over epochs,
    # so the selected epoch is not simply the last one.
    rng = np.random.default_rng(9)
    flip = rng.random(len(train_y)) < 0.3
    train_y = np.where(flip, rng.integers(0, NUM_CLASSES, len(train_y)), train_y)
    meta_x, _ = _separable(60, seed=1)
    test_x, test_y = _separable(150, seed=2)
    model = meta_model.MetaReweightModel(_backbone(seed=0))  # method ce: no meta-net
    model.compile(keras.optimizers.SGD(0.1))
    epochs, keep, meta_batch, seed = 6, 3, 25, 11  # meta batches 25, 25, 10
    callback = selection.ClidSelection(meta_x, test=(test_x, test_y), batch_size=meta_batch,
                                       tau=0.5, keep=keep, seed=seed, eval_batch_size=64)
    board = keras.callbacks.TensorBoard(str(tmp_path))
    history = model.fit(helpers.array_stream(train_x, train_y, batch_size=8, seed=0),
                        epochs=epochs, steps_per_epoch=3, verbose=0, shuffle=False,
                        validation_data=(test_x, test_y),
                        callbacks=[callback, board]).history

    new_keys = ("meta_set_clid", "selected_accuracy", "ensemble3_accuracy",
                "ensemble5_accuracy")
    for key in new_keys:
        assert len(history[key]) == epochs, key
    assert {f"epoch_{key}" for key in new_keys} <= _event_tags(str(tmp_path))
    summary = callback.summary()
    meta_clid = np.array(summary["meta_clid"])
    np.testing.assert_allclose(meta_clid, history["meta_set_clid"], rtol=1e-6)
    assert summary["epochs"] == list(range(1, epochs + 1))
    assert np.ptp(meta_clid) > 0

    # This epoch's test accuracy is the one Keras evaluates on the same test set.
    np.testing.assert_allclose(summary["test_accuracy"], history["val_accuracy"], atol=1e-6)

    # Selection = argmin of meta CLID, so far at every epoch and at the end.
    for e in range(epochs):
        best = int(np.argmin(meta_clid[:e + 1]))
        np.testing.assert_allclose(history["selected_accuracy"][e],
                                   history["val_accuracy"][best], atol=1e-6)
    selected = int(np.argmin(meta_clid)) + 1
    assert summary["selected_epoch"] == selected
    assert selected < epochs  # the noisy setup above makes selection non-trivial
    np.testing.assert_allclose(summary["selected_accuracy"],
                               history["val_accuracy"][selected - 1], atol=1e-6)
    assert summary["selected_accuracy"] == history["selected_accuracy"][-1]

    # Only `keep` logits arrays are stored: those of the `keep` lowest-CLID epochs.
    assert len(callback.store) == keep
    kept_epochs = [k["epoch"] for k in summary["kept"]]
    assert kept_epochs == [int(i) + 1 for i in np.argsort(meta_clid, kind="stable")[:keep]]
    entries = callback.store.entries
    assert all(e.logits.shape == (len(test_y), NUM_CLASSES) for e in entries)
    assert selection.accuracy(entries[0].logits, test_y) == summary["selected_accuracy"]

    # Ensembles recomputed from the kept logits (ensemble5 over the 3 stored).
    summed = sum(e.logits.astype(np.float64) for e in entries)
    acc3 = float(np.mean(np.argmax(summed, axis=1) == test_y))
    assert summary["ensemble3_accuracy"] == acc3 == history["ensemble3_accuracy"][-1]
    assert summary["ensemble5_accuracy"] == acc3 == history["ensemble5_accuracy"][-1]

    # The last epoch is reproducible from the final weights (seed + 1-based epoch).
    last = selection.meta_set_clid(model.backbone, data.as_part(meta_x), batch_size=meta_batch, tau=0.5,
                                   seed=seed + epochs)
    np.testing.assert_allclose(last, meta_clid[-1], rtol=1e-5)
    logits = model.backbone(tf.constant(test_x), training=False)[0].numpy()
    np.testing.assert_allclose(selection.accuracy(logits, test_y),
                               summary["test_accuracy"][-1], atol=1e-6)


def test_callback_requires_backbone():
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(NUM_CLASSES)])
    callback = selection.ClidSelection(np.zeros((4, DIM)), test=(np.zeros((2, DIM)), np.zeros(2)))
    callback.set_model(model)
    with pytest.raises(ValueError, match="backbone"):
        callback.on_train_begin()


def test_epochs_before_eligible_from_are_scored_but_never_selected():
    """DivideMix's warm-up: epochs before `eligible_from` log their meta-set CLID and test
    accuracy, but the store (selection, ensembles, kept weights) holds later epochs only,
    even when an earlier epoch has the lowest CLID."""
    keras.utils.set_random_seed(0)
    x, y = _separable(120, seed=0)
    model = meta_model.MetaReweightModel(_backbone(seed=0))
    model.compile(keras.optimizers.SGD(0.1))
    callback = selection.ClidSelection(x[:40], test=(x[40:], y[40:]), batch_size=20, keep=5,
                                       eligible_from=3)
    history = model.fit(helpers.array_stream(x, y, batch_size=8, seed=0), epochs=5,
                        steps_per_epoch=3, verbose=0, shuffle=False,
                        callbacks=[callback]).history
    assert len(history["meta_set_clid"]) == 5 and len(history["selected_accuracy"]) == 3
    summary = callback.summary()
    assert sorted(k["epoch"] for k in summary["kept"]) == [3, 4, 5]
    assert summary["eligible_epochs"] == [3, 4, 5]
    clid = np.array(summary["meta_clid"])
    assert summary["selected_epoch"] == 3 + int(np.argmin(clid[2:]))
    with pytest.raises(ValueError, match="not among the kept"):
        callback.load_weights(_backbone(seed=1), 1)


class _EpochRates(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate per epoch (`rates[step // steps]`), the last one held after."""

    def __init__(self, rates, steps):
        self.rates, self.steps = list(rates), steps

    def __call__(self, step):
        epoch = tf.minimum(tf.cast(step, tf.int32) // self.steps, len(self.rates) - 1)
        return tf.gather(tf.constant(self.rates, tf.float32), epoch)

    def get_config(self):
        return {"rates": self.rates, "steps": self.steps}


@pytest.mark.parametrize("rates, eligible", [
    ((0.1, 0.1, 0.01, 0.01, 0.01), [3, 4, 5]),  # a step schedule: its last step
    ((0.1, 0.05, 0.02, 0.01, 0.005), [5]),  # a single anneal: the last epoch
    ((0.1, 0.01, 0.1, 0.01, 0.1), [2, 4]),  # a periodic cosine's troughs, not its climb
    ((0.1, 0.1, 0.1, 0.1, 0.1), [1, 2, 3, 4, 5]),  # a constant rate: every epoch
])
def test_only_epochs_at_the_lowest_learning_rate_compete(tmp_path, rates, eligible):
    """match_lr: an epoch at a new lowest rate restarts the store (the earlier epochs'
    weight files go), an epoch at a higher rate is scored but never kept; the selection is
    the lowest CLID among the epochs at the lowest rate, and a restart from get_state
    carries on the same way (a fresh callback given the state after epoch 3)."""
    keras.utils.set_random_seed(0)
    x, y = _separable(120, seed=0)
    model = meta_model.MetaReweightModel(_backbone(seed=0))
    model.compile(keras.optimizers.SGD(_EpochRates(rates, steps=3)))
    folder = str(tmp_path / "selected")
    callback = selection.ClidSelection(x[:40], test=(x[40:], y[40:]), batch_size=20, keep=5,
                                       directory=folder)
    history = model.fit(helpers.array_stream(x, y, batch_size=8, seed=0), epochs=5,
                        steps_per_epoch=3, verbose=0, shuffle=False,
                        callbacks=[callback]).history
    np.testing.assert_allclose(history["lr"], rates, rtol=1e-6)
    summary = callback.summary()
    assert summary["eligible_epochs"] == eligible
    assert sorted(k["epoch"] for k in summary["kept"]) == eligible
    clid = np.array(summary["meta_clid"])
    assert summary["selected_epoch"] == eligible[int(np.argmin(clid[np.array(eligible) - 1]))]
    assert sorted(os.listdir(folder)) == sorted(f"epoch-{e}.npz" for e in eligible)
    assert selection.lowest_rate_epochs(rates) == eligible
    assert selection.lowest_rate_epochs(rates, eligible_from=6) == []
    # one epoch at a time, the rate from learning_rate=, and from a saved state after
    # epoch 3 as a resumed run continues
    now = {}

    def make():
        return selection.ClidSelection(x[:40], test=(x[40:], y[40:]), batch_size=20, keep=5,
                                       learning_rate=lambda: now["lr"])

    callback = make()
    for epoch in range(5):
        if epoch in (0, 3):
            state = None if epoch == 0 else callback.get_state()
            callback = make()
            if state is not None:
                callback.set_state(state)
            callback.set_model(model)
            callback.on_train_begin()
        now["lr"] = rates[epoch]
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {})
    assert callback.summary()["eligible_epochs"] == eligible


def test_lowest_rate_epochs_follows_the_online_rule_within_the_tolerance():
    """Rates within LR_RTOL are one rate; the pool restarts only below it."""
    tol = selection.LR_RTOL
    assert selection.lowest_rate_epochs([1.0, 1.0 - tol / 2, 1.0 - tol * 1.2]) == [3]
    assert selection.lowest_rate_epochs([1.0, 1.0 - tol / 2]) == [1, 2]
    assert selection.lowest_rate_epochs([1.0, 0.5, 1.0, 0.5], eligible_from=2) == [2, 4]


def test_a_state_saved_before_match_lr_goes_on_ranking_every_epoch():
    callback = selection.ClidSelection(np.zeros((4, DIM)), batch_size=2, learning_rate=lambda: 0.1)
    callback.epochs, callback.meta_clid, callback.test_accuracy = [1, 2], [4.0, 3.0], []
    callback.store.update(3.0, 2)
    state = {k: v for k, v in callback.get_state().items()
             if k not in ("selection_lr_floor", "selection_eligible")}
    resumed = selection.ClidSelection(np.zeros((4, DIM)), batch_size=2,
                                      learning_rate=lambda: 0.01)
    resumed.set_state(state)
    assert not resumed.match_lr and resumed.eligible == [1, 2]
    assert resumed.store.best_epochs() == [2]


def test_the_rate_comes_from_the_compiled_optimizer_or_a_clear_error():
    model = meta_model.MetaReweightModel(_backbone(seed=0))
    callback = selection.ClidSelection(np.zeros((4, DIM)), batch_size=2)
    callback.set_model(model)
    with pytest.raises(ValueError, match="match_lr=False"):
        callback.on_train_begin()  # not compiled: no optimizer to read
    unmatched = selection.ClidSelection(np.zeros((4, DIM)), batch_size=2, match_lr=False)
    unmatched.set_model(model)
    unmatched.on_train_begin()
    unmatched.on_epoch_begin(0)
    unmatched.on_epoch_end(0, {})
    assert unmatched.summary()["eligible_epochs"] == [1]
    model.compile(keras.optimizers.SGD(0.125))
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    assert callback._epoch_rate == 0.125  # pylint: disable=protected-access


def test_before_any_eligible_epoch_there_is_no_selection():
    callback = selection.ClidSelection(np.zeros((4, DIM)), eligible_from=2)
    callback.epochs = [1]
    with pytest.raises(ValueError, match="no eligible epoch"):
        callback.summary()
