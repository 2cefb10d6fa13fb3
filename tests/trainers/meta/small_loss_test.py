"""Small-loss meta sets: GMM clean probability, per-class selection, live stream, callback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.data import pipelines as data
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import gmm
from clid_tf.trainers.meta import small_loss as sloss
from clid_tf.data.inputs import ArrayInputs
from tests.helpers import small_models as helpers

NUM_CLASSES = 3
DIM = 4


def _bimodal(seed=0):
    """700 small losses around 0.2 and 300 large ones around 2.0, shuffled."""
    rng = np.random.default_rng(seed)
    losses = np.abs(np.concatenate([rng.normal(0.2, 0.05, 700), rng.normal(2.0, 0.3, 300)]))
    is_low = np.arange(1000) < 700
    order = rng.permutation(1000)
    return losses[order], is_low[order]


def _separable_noisy(n, seed, rate=0.3):
    """Three Gaussian blobs in R^4; `rate` of the labels flipped to another class."""
    rng = np.random.default_rng(seed)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    clean = rng.integers(0, NUM_CLASSES, size=n)
    x = (centers[clean] + rng.normal(size=(n, DIM))).astype(np.float32)
    flip = rng.random(n) < rate
    noisy = np.where(flip, (clean + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES,
                     clean)
    return x, noisy.astype(np.int64), clean.astype(np.int64)


# ---------------------------------------------------------------- GMM
def test_clean_probability_ranks_the_low_loss_mode_high():
    losses, is_low = _bimodal()
    prob = gmm.clean_probability(losses, seed=0)
    assert prob.shape == (1000,) and prob.dtype == np.float64
    assert np.all((prob >= 0) & (prob <= 1))
    assert prob[is_low].min() > prob[~is_low].max()
    assert prob[is_low].mean() > 0.95 and prob[~is_low].mean() < 0.05


def test_clean_probability_is_deterministic_per_seed():
    losses, _ = _bimodal(seed=1)
    np.testing.assert_array_equal(gmm.clean_probability(losses, seed=7),
                                  gmm.clean_probability(losses, seed=7))


def test_clean_probability_degenerate_inputs():
    np.testing.assert_array_equal(gmm.clean_probability(np.ones(5), seed=0), np.full(5, 0.5))
    prob = gmm.clean_probability(np.array([0.1, 0.1, 0.2, np.nan, 3.0, 3.1]), seed=0)
    assert np.all(np.isfinite(prob)) and prob[3] < 0.5  # NaN counts as the largest loss


# ---------------------------------------------------------------- selection
def test_select_small_loss_takes_the_lowest_losses_per_class():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    losses = np.empty(30)
    expected = []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        losses[members[:5]] = rng.uniform(0.01, 0.1, 5)  # clean-looking
        losses[members[5:]] = rng.uniform(2.0, 3.0, 5)   # noisy-looking
        expected.append(members[np.argsort(losses[members])[:3]])
    chosen = sloss.select_small_loss(losses, labels, size=10, num_classes=NUM_CLASSES,
                                     seed=0)
    assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(chosen, np.sort(np.concatenate(expected)))
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=3), [3, 3, 3])


def test_select_small_loss_short_class_gives_all_it_has():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 2)
    losses = np.random.default_rng(1).random(len(labels))
    chosen = sloss.select_small_loss(losses, labels, size=15, num_classes=3, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=3), [5, 5, 2])
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        sloss.select_small_loss(losses, labels, size=2, num_classes=3, seed=0)


def test_cross_entropy_matches_tensorflow():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(8, 3)) * 5, rng.integers(0, 3, 8)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    np.testing.assert_allclose(gmm.cross_entropy(logits, labels), expected.numpy(),
                               rtol=1e-10)


# ---------------------------------------------------------------- live stream
def _identity_meta_set(initial):
    """Image i is [i, i] (uint8) and label i % 3, so a batch reveals its indices."""
    images = np.repeat(np.arange(30, dtype=np.uint8)[:, None], 2, axis=1)
    labels = np.arange(30) % 3
    return sloss.DynamicMetaSet(ArrayInputs(images), labels, initial, size=6,
                                num_classes=3)


def test_stream_reflects_assign_made_after_the_iterator_exists():
    meta_set = _identity_meta_set(np.arange(6))
    iterator = iter(meta_set.stream(batch_size=8, seed=0))
    for _ in range(3):
        batch = next(iterator)
        assert batch["image"].dtype == tf.float32 and batch["image"].shape == (8, 2)
        assert batch["label"].dtype == tf.int32
        assert set(batch["image"].numpy()[:, 0].astype(int)) <= set(range(6))
    meta_set.assign([20, 24, 27])  # fewer than M = 6: only these may be drawn
    np.testing.assert_array_equal(meta_set.indices, [20, 24, 27])
    # In-memory inputs are gathered where the indices are drawn: the next batch already
    # comes from the new selection.
    batches = [next(iterator)["image"].numpy()[:, 0].astype(int) for _ in range(6)]
    seen = set()
    for drawn in batches:
        assert set(drawn) <= {20, 24, 27}
        seen |= set(drawn)
    assert seen == {20, 24, 27}
    labels = next(iterator)
    np.testing.assert_array_equal(labels["label"].numpy(),
                                  labels["image"].numpy()[:, 0].astype(int) % 3)


def test_stream_is_reproducible_per_seed():
    meta_set = _identity_meta_set(np.arange(6))
    first = [b["image"].numpy() for b in meta_set.stream(4, seed=3).take(3)]
    again = [b["image"].numpy() for b in meta_set.stream(4, seed=3).take(3)]
    np.testing.assert_array_equal(first, again)


def test_assign_rejects_bad_indices():
    meta_set = _identity_meta_set(np.arange(6))
    with pytest.raises(ValueError, match="1 to 6"):
        meta_set.assign(np.arange(7))
    with pytest.raises(ValueError, match=r"\[0, 30\)"):
        meta_set.assign([3, 30])


# ---------------------------------------------------------------- callback
def test_reselection_after_training_picks_clean_samples():
    x, noisy, clean = _separable_noisy(600, seed=0)
    size = 60
    source = ArrayInputs(x)
    initial = np.sort(np.random.default_rng(0).choice(len(x), size, replace=False))
    meta_set = sloss.DynamicMetaSet(source, noisy, initial, size=size,
                                    num_classes=NUM_CLASSES)
    backbone = backbones.build("mlp", num_classes=NUM_CLASSES, input_shape=(DIM,),
                               mean=(0,) * DIM, std=(1,) * DIM, seed=0)
    model = meta_model.MetaReweightModel(backbone)
    model.compile(keras.optimizers.SGD(0.1))
    train = helpers.array_stream(x, noisy, batch_size=50, seed=0)
    stream = tf.data.Dataset.zip(train, meta_set.stream(20, seed=1)).map(
        lambda t, m: {"train": t["train"], "meta": m})
    model.fit(stream, epochs=2, steps_per_epoch=12, verbose=0,
              shuffle=False)  # warm-up
    reselect = sloss.SmallLossReselection(meta_set, data.Part(source, None, noisy), size=size,
                                          num_classes=NUM_CLASSES, seed=0,
                                          batch_size=128, clean_labels=clean)
    fitted = model.fit(stream, initial_epoch=2, epochs=4, steps_per_epoch=12, verbose=0,
                       shuffle=False, callbacks=[reselect])
    assert np.mean(noisy == clean) < 0.75
    assert [r.epoch for r in reselect.history] == [3, 4]
    last = reselect.history[-1]
    assert len(last.indices) == size
    np.testing.assert_array_equal(np.bincount(noisy[last.indices], minlength=3), [20] * 3)
    np.testing.assert_array_equal(meta_set.indices, last.indices)
    assert last.precision > 0.9
    assert fitted.history["sloss_meta_precision"] == [r.precision for r in reselect.history]
