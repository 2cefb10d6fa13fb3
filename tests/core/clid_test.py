"""CLID against a float64 numpy reference, its analytic gradient, and its XLA twin."""

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.core import clid as clid_lib
from tests.helpers import gradients


def _inputs(n, d, k, seed, negative=True):
    rng = np.random.default_rng(seed)
    feat = rng.normal(size=(n, d))
    if not negative:
        feat = np.abs(feat)
    logits = rng.normal(scale=2.0, size=(n, k))
    return feat, logits


@pytest.mark.parametrize("n,d,k,tau", [(8, 5, 3, 0.5), (32, 16, 10, 0.1), (100, 64, 10, 0.5),
                                       (17, 7, 100, 1.5)])
@pytest.mark.parametrize("negative", [True, False])
def test_value_matches_numpy_reference(n, d, k, tau, negative):
    feat, logits = _inputs(n, d, k, seed=n + k, negative=negative)
    expected, _ = gradients.reference_clid(feat, logits, tau)
    got = clid_lib.clid(tf.constant(feat), tf.constant(logits), tau=tau)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    got32 = clid_lib.clid(tf.constant(feat, tf.float32), tf.constant(logits, tf.float32), tau=tau)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5)


def test_negative_similarities_are_zeroed_not_excluded():
    # Two anti-parallel features: cosine -1 becomes 0, which keeps softmax mass exp(0).
    feat = np.array([[1.0, 0.0], [-1.0, 0.0]])
    logits = np.zeros((2, 3))
    tau = 0.5
    s_row = np.exp([1 / tau, 0.0]) / np.exp([1 / tau, 0.0]).sum()
    expected = 0.5 * (-np.log(s_row[0] + 1e-7) - np.log(s_row[1] + 1e-7))
    got = clid_lib.clid(tf.constant(feat), tf.constant(logits), tau=tau)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_identical_rows_give_log_n():
    n = 12
    feat = np.ones((n, 4))
    logits = np.tile([[0.3, -1.0, 2.0]], (n, 1))
    got = clid_lib.clid(tf.constant(feat), tf.constant(logits), tau=0.5)
    np.testing.assert_allclose(got.numpy(), np.log(n), rtol=1e-6)


@pytest.mark.parametrize("n,d,k", [(10, 6, 4), (50, 32, 10)])
def test_logit_gradient_matches_analytic_form(n, d, k):
    feat, logits = _inputs(n, d, k, seed=7)
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        value = clid_lib.clid(tf.constant(feat), logits_t, tau=0.5)
    got = tape.gradient(value, logits_t).numpy()
    np.testing.assert_allclose(got, gradients.analytic_logit_grad(feat, logits, 0.5), rtol=1e-8,
                               atol=1e-12)


def test_no_gradient_to_features():
    feat, logits = _inputs(16, 8, 5, seed=3)
    feat_t = tf.constant(feat)
    with tf.GradientTape() as tape:
        tape.watch(feat_t)
        value = clid_lib.clid(feat_t, tf.constant(logits), tau=0.5)
    grad = tape.gradient(value, feat_t, unconnected_gradients="zero")
    np.testing.assert_array_equal(grad.numpy(), 0.0)


def test_permutation_invariance():
    feat, logits = _inputs(20, 8, 5, seed=11)
    perm = np.random.default_rng(0).permutation(20)
    a = clid_lib.clid(tf.constant(feat), tf.constant(logits), tau=0.5)
    b = clid_lib.clid(tf.constant(feat[perm]), tf.constant(logits[perm]), tau=0.5)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_xla_matches_eager_value_and_gradient(dtype):
    feat, logits = _inputs(64, 32, 10, seed=5)
    feat_t, logits_t = tf.constant(feat, dtype), tf.constant(logits, dtype)

    def value_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(logits_t)
            value = fn(feat_t, logits_t, tau=0.5)
        return value.numpy(), tape.gradient(value, logits_t).numpy()

    v_eager, g_eager = value_and_grad(clid_lib.clid)
    v_xla, g_xla = value_and_grad(clid_lib.clid_xla)
    tol = 1e-5 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(v_xla, v_eager, rtol=tol)
    np.testing.assert_allclose(g_xla, g_eager, rtol=tol * 10, atol=tol * 1e-3)
    assert clid_lib.clid_xla._jit_compile
