"""Per-sample losses, weight normalisation and meta objectives against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.core import objectives
from tests.helpers import small_models as helpers
from tests.helpers.gradients import analytic_logit_grad, reference_clid


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


def test_clid_objective_matches_the_float64_numpy_reference():
    """meta_objective('clid') against the authors' `clid_loss` (ruofanhu/CLID-MU@5cd0608,
    utilities.py) in numpy (value and logit gradient), for two temperatures; labels, given
    or not, change nothing."""
    features = np.random.default_rng(1).normal(size=(7, 5))
    for tau in (0.5, 0.1):
        objective = objectives.meta_objective("clid", tau=tau)
        logits = tf.constant(LOGITS)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = objective(features, logits, None)
        want, _ = reference_clid(features, LOGITS, tau)
        np.testing.assert_allclose(float(value), want, rtol=1e-12)
        np.testing.assert_allclose(tape.gradient(value, logits).numpy(),
                                   analytic_logit_grad(features, LOGITS, tau), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(float(objective(features, LOGITS, LABELS)), want,
                                   rtol=1e-12)
    assert not np.isclose(reference_clid(features, LOGITS, 0.5)[0],
                          reference_clid(features, LOGITS, 0.1)[0])


def test_meta_objectives_read_labels_only_when_labelled():
    features = np.random.default_rng(1).normal(size=(7, 5))
    assert float(objectives.meta_objective("entropy", tau=0.5)(features, LOGITS, None)) > 0
    for name in ("ce_clean", "ce_noisy", "ce_sloss"):
        want = np.mean(objectives.per_sample_ce(LOGITS, LABELS).numpy())
        assert float(objectives.meta_objective(name, tau=0.5)(features, LOGITS, LABELS)) == \
            pytest.approx(want)
    assert set(objectives.META_OBJECTIVE_LABELS) >= {"clid", "entropy", "ce_clean", "mae"}
    assert objectives.META_OBJECTIVE_LABELS["clid"] == "none"
    with pytest.raises(ValueError, match="unknown meta objective"):
        objectives.meta_objective("kl", tau=0.5)


def test_wnet_weights_pass_no_gradient_to_the_logits():
    """d(WNet's weighted loss)/d logits = w~_i (softmax(z_i) - onehot(y_i)): the weights act
    as constants, since the WeightNet stops the gradient at its input (the losses). Without
    that stop-gradient the same net gives a different logit gradient."""
    with helpers.floatx("float64"):
        net = helpers.weight_net(seed=3)
    logits = tf.constant(LOGITS)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        out = net.weighted_loss(logits, None, tf.constant(LABELS))
        losses = objectives.per_sample_ce(logits, LABELS)
        through = objectives.weighted_mean(losses, net.out(net.hidden(losses[:, None]))[:, 0])
    assert tape.gradient(out.weights, logits) is None
    w = out.weights.numpy()
    want = (w / w.sum())[:, None] * (_softmax(LOGITS) - np.eye(4)[LABELS])
    np.testing.assert_allclose(tape.gradient(out.loss, logits).numpy(), want, rtol=1e-10,
                               atol=1e-14)
    assert not np.allclose(tape.gradient(through, logits).numpy(), want, rtol=1e-6, atol=1e-9)
