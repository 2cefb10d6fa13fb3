"""Per-sample losses, weight normalisation and meta objectives against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from clid_tf import clid as clid_lib
from clid_tf import objectives


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


LOGITS = np.random.default_rng(0).normal(scale=2.0, size=(7, 4))
LABELS = np.array([0, 1, 2, 3, 0, 1, 2])


def test_per_sample_ce_and_mae():
    p = _softmax(LOGITS)[np.arange(7), LABELS]
    np.testing.assert_allclose(objectives.per_sample_ce(LOGITS, LABELS).numpy(), -np.log(p),
                               rtol=1e-10)
    np.testing.assert_allclose(objectives.per_sample_mae(LOGITS, LABELS).numpy(), 1 - p,
                               rtol=1e-10)


def test_weighted_mean_normalises_weights_to_sum_one():
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    weights = np.array([0.5, 0.25, 0.25, 0.0])
    want = np.sum(weights / weights.sum() * losses)
    assert float(objectives.weighted_mean(losses, weights)) == pytest.approx(want)
    # scale invariance, and the all-zero case keeps the weights (no division by zero)
    assert float(objectives.weighted_mean(losses, 7 * weights)) == pytest.approx(want)
    np.testing.assert_array_equal(objectives.normalize_weights(np.zeros(4)).numpy(), 0.0)


def test_mean_entropy():
    p = _softmax(LOGITS)
    want = -np.mean(np.sum(p * np.log(p), axis=1))
    assert float(objectives.mean_entropy(LOGITS)) == pytest.approx(want, rel=1e-10)


def test_meta_objectives_read_labels_only_when_labelled():
    features = np.random.default_rng(1).normal(size=(7, 5))
    clid = objectives.meta_objective("clid", tau=0.5)
    np.testing.assert_allclose(float(clid(features, LOGITS, None)),
                               float(clid_lib.clid(features, LOGITS, tau=0.5)), rtol=1e-6)
    assert float(objectives.meta_objective("entropy", tau=0.5)(features, LOGITS, None)) > 0
    for name in ("ce_clean", "ce_noisy", "ce_sloss"):
        want = np.mean(objectives.per_sample_ce(LOGITS, LABELS).numpy())
        assert float(objectives.meta_objective(name, tau=0.5)(features, LOGITS, LABELS)) == \
            pytest.approx(want)
    assert set(objectives.META_OBJECTIVE_LABELS) >= {"clid", "entropy", "ce_clean", "mae"}
    assert objectives.META_OBJECTIVE_LABELS["clid"] == "none"
    with pytest.raises(ValueError, match="unknown meta objective"):
        objectives.meta_objective("kl", tau=0.5)


def test_weights_get_no_gradient_through_wnet_input():
    losses = tf.constant([0.5, 1.5])
    with tf.GradientTape() as tape:
        tape.watch(losses)
        value = objectives.weighted_mean(losses, tf.stop_gradient(losses))
    np.testing.assert_allclose(tape.gradient(value, losses).numpy(), [0.25, 0.75])
