"""The hypergradient through the virtual step against finite differences (float64)."""

import numpy as np
import pytest
import tensorflow as tf

from clid_tf import objectives
from clid_tf import virtual
from clid_tf import vri
from tests import helpers


def _meta_loss_at(backbone, meta_net, batch, meta_batch, lr, objective, last_layer=False):
    """L_meta(theta - lr * grad_theta L_f(theta, phi)) with first-order autodiff only.

    With last_layer=True only the head (last two trainable tensors) takes the step.
    """
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        logits, features, _ = virtual.forward(backbone, theta, frozen, batch["image"])
        loss = meta_net.weighted_loss(logits, features, batch["label"]).loss
    grads = tape.gradient(loss, theta)
    if last_layer:
        grads = [tf.zeros_like(g) for g in grads[:-2]] + grads[-2:]
    theta_prime = [t - lr * g for t, g in zip(theta, grads)]
    meta_logits, meta_features, _ = virtual.forward(backbone, theta_prime, frozen,
                                                    meta_batch["image"])
    return float(objective(meta_features, meta_logits, meta_batch.get("label")))


def _directional_check(meta_net, grads, loss_at, h=1e-6, directions=4, rtol=1e-5):
    """<grad, d> against central differences of loss_at() along random directions d."""
    phi = meta_net.trainable_variables
    rng = np.random.default_rng(1)
    for _ in range(directions):
        direction = [rng.normal(size=p.shape) for p in phi]
        originals = [p.numpy() for p in phi]
        values = []
        for sign in (1.0, -1.0):
            for p, o, d in zip(phi, originals, direction):
                p.assign(o + sign * h * d)
            values.append(loss_at())
        for p, o in zip(phi, originals):
            p.assign(o)
        numeric = (values[0] - values[1]) / (2 * h)
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=1e-10)


def _frozen_clid(features0, logits0, tau=0.5, eps=1e-7):
    """CLID with its detached parts (S and the row sums of W) frozen at a base point.

    CLID's gradient is defined with stop-gradients, so it is not the derivative of CLID's
    value; it is the exact derivative of this surrogate at the base point, which finite
    differences can then check.
    """
    unit = tf.math.l2_normalize(features0, axis=1, epsilon=1e-24)
    sim = tf.maximum(tf.matmul(unit, unit, transpose_b=True) / tau, 0.0)
    neg_log_s = -tf.math.log(tf.nn.softmax(sim, axis=-1) + eps)

    def pred_sim(logits):
        p = tf.math.l2_normalize(tf.nn.softmax(logits, axis=-1), axis=1, epsilon=1e-24)
        return tf.matmul(p, p, transpose_b=True)

    rowsum0 = tf.reduce_sum(pred_sim(logits0), axis=1, keepdims=True)
    return lambda features, logits, labels: tf.reduce_mean(
        tf.reduce_sum(pred_sim(logits) / rowsum0 * neg_log_s, axis=1))


@pytest.mark.parametrize("meta_grad", ["jvp", "tape", "recompute"])
@pytest.mark.parametrize("objective_name", ["clid", "ce_clean", "entropy", "mae"])
def test_hypergradient_matches_central_differences(objective_name, meta_grad):
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier()
        meta_net = helpers.weight_net()
        batch, meta_batch = helpers.batches(
            meta_labels=objective_name in ("ce_clean", "mae"))
        objective = objectives.meta_objective(objective_name, tau=0.5)
        lr = tf.constant(0.5, tf.float64)
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, lr=lr,
                                        meta_objective=objective, meta_grad=meta_grad)
        if objective_name == "clid":
            base = {}
            virtual.meta_gradients(
                backbone, meta_net, batch, meta_batch, lr=lr,
                meta_objective=lambda f, z, y: base.update(f=f, z=z) or tf.reduce_sum(z))
            objective = _frozen_clid(base["f"], base["z"])
            np.testing.assert_allclose(  # the surrogate has CLID's value at the base point
                objective(base["f"], base["z"], None).numpy(), result.meta_loss.numpy())
        grads = [g.numpy() for g in result.meta_grads]
        assert any(np.abs(g).max() > 1e-8 for g in grads)
        _directional_check(meta_net, grads, lambda: _meta_loss_at(
            backbone, meta_net, batch, meta_batch, lr, objective))


@pytest.mark.parametrize("objective_name", ["ce_noisy", "entropy"])
def test_last_layer_hypergradient_matches_central_differences(objective_name):
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier()
        backbone.head = backbone.get_layer("dense2")
        meta_net = helpers.weight_net()
        batch, meta_batch = helpers.batches(meta_labels=objective_name == "ce_noisy")
        objective = objectives.meta_objective(objective_name, tau=0.5)
        lr = tf.constant(0.5, tf.float64)
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, lr=lr,
                                        meta_objective=objective, scope="last_layer")
        grads = [g.numpy() for g in result.meta_grads]
        assert any(np.abs(g).max() > 1e-8 for g in grads)
        _directional_check(meta_net, grads, lambda: _meta_loss_at(
            backbone, meta_net, batch, meta_batch, lr, objective, last_layer=True))
        full = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, lr=lr,
                                      meta_objective=objective)
        assert not np.allclose(full.meta_grads[0].numpy(), grads[0])  # a different problem


@pytest.mark.parametrize("meta_net_kind", ["wnet", "vri"])
def test_all_routes_give_the_tape_hypergradient_with_batchnorm(meta_net_kind):
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier(hidden=5)
        if meta_net_kind == "wnet":
            make = helpers.weight_net
        else:
            make = lambda: vri.VRINet(3, 5, hidden=(16, 8, 8), seed=0)  # noqa: E731
        batch, meta_batch = helpers.batches(batch=10, meta=7)
        objective = objectives.meta_objective("clid", tau=0.5)
        results = {}
        for mode in ("jvp", "recompute", "tape"):
            meta_net = make()  # same seed: same weights and the same VRI noise draws
            results[mode] = virtual.meta_gradients(
                backbone, meta_net, batch, meta_batch, lr=tf.constant(0.3, tf.float64),
                meta_objective=objective, meta_grad=mode)
        for mode in ("jvp", "recompute"):
            np.testing.assert_allclose(results[mode].meta_loss.numpy(),
                                       results["tape"].meta_loss.numpy(), rtol=1e-12)
            for a, b in zip(results[mode].meta_grads, results["tape"].meta_grads):
                a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)
        assert any(np.abs(tf.convert_to_tensor(g).numpy()).max() > 1e-8
                   for g in results["jvp"].meta_grads)


def test_forward_leaves_batchnorm_statistics_untouched():
    backbone = helpers.tiny_classifier()
    before = helpers.snapshot(backbone.non_trainable_variables)
    batch, meta_batch = helpers.batches()
    meta_net = helpers.weight_net()
    result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch,
                                    lr=tf.constant(0.1),
                                    meta_objective=objectives.meta_objective("clid", tau=0.5))
    assert np.isfinite(result.meta_loss.numpy())
    for b, v in zip(before, backbone.non_trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    # ...while the same forward in training mode does compute new statistics.
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    _, _, updated = virtual.forward(backbone, theta, frozen, batch["image"])
    assert any(not np.allclose(u, b) for u, b in zip(updated, before))


def test_lookahead_is_plain_sgd():
    params = [tf.constant([1.0, 2.0]), tf.constant(3.0)]
    grads = [tf.constant([0.5, -1.0]), None]
    out = virtual.lookahead(params, grads, tf.constant(0.1))
    np.testing.assert_allclose(out[0].numpy(), [0.95, 2.1])
    assert float(out[1]) == 3.0
