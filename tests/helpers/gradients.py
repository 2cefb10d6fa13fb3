"""Gradient references of the tests: a numpy CLID, and finite-difference checks of the
hypergradient through the virtual step."""

import numpy as np
import tensorflow as tf

from clid_tf.core import virtual


def softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def meta_loss_at(backbone, meta_net, batch, meta_batch, step, objective, stepped=None):
    """L_meta(theta') with theta' = step(theta, grad_theta L_f(theta, phi)), computed with
    first-order autodiff only.

    Only the trainable tensors at the indices `stepped` (default: all) take the step; the
    others stay at theta.
    """
    variables = backbone.trainable_variables
    theta = [v.value for v in variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        logits, features, _ = virtual.forward(backbone, theta, frozen, batch["image"])
        loss = meta_net.weighted_loss(logits, features, batch["label"]).loss
    grads = tape.gradient(loss, theta)
    stepped = range(len(theta)) if stepped is None else stepped
    ahead = step([variables[i] for i in stepped], [theta[i] for i in stepped],
                 [grads[i] for i in stepped])
    theta_prime = list(theta)
    for i, p in zip(stepped, ahead.params):
        theta_prime[i] = p
    meta_logits, meta_features, _ = virtual.forward(backbone, theta_prime, frozen,
                                                    meta_batch["image"])
    return float(objective(meta_features, meta_logits, meta_batch.get("label")))


def directional_check(meta_net, grads, loss_at, h=1e-6, directions=4, rtol=1e-5):
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


def entrywise_check(meta_net, grads, loss_at, h=1e-5, entries=5, rtol=1e-4,
                     largest=False):
    """Entries of grad against central differences of loss_at() in `entries` random entries
    of phi (among those whose gradient is not negligible), or its `largest` entries:
    relative error <= rtol."""
    phi = meta_net.trainable_variables
    flat = np.concatenate([g.ravel() for g in grads])
    offsets = np.cumsum([0] + [g.size for g in grads])
    if largest:
        chosen = np.argsort(-np.abs(flat))[:entries]
    else:
        candidates = np.flatnonzero(np.abs(flat) > 1e-3 * np.abs(flat).max())
        chosen = np.random.default_rng(1).choice(candidates, entries, replace=False)
    for index in chosen:
        which = int(np.searchsorted(offsets, index, side="right") - 1)
        variable, original = phi[which], phi[which].numpy()
        values = []
        for sign in (1.0, -1.0):
            moved = original.copy().ravel()
            moved[index - offsets[which]] += sign * h
            variable.assign(moved.reshape(original.shape))
            values.append(loss_at())
        variable.assign(original)
        numeric = (values[0] - values[1]) / (2 * h)
        assert abs(flat[index] - numeric) <= rtol * abs(numeric), (index, flat[index], numeric)


def clid_surrogate(backbone, meta_net, batch, meta_batch, step, **kwargs):
    """`frozen_clid` at the meta batch's features and logits at theta' of this step."""
    base = {}
    virtual.meta_gradients(
        backbone, meta_net, batch, meta_batch, step=step,
        meta_objective=lambda f, z, y: base.update(f=f, z=z) or tf.reduce_sum(z), **kwargs)
    return frozen_clid(base["f"], base["z"]), base


def frozen_clid(features0, logits0, tau=0.5, eps=1e-7):
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


def reference_clid(feat, logits, tau, eps=1e-7):
    """A line-for-line numpy CLID (docs/design.md); also returns its pieces for gradients."""
    fh = unit(feat)
    a = fh @ fh.T / tau
    a = a * (a >= 0)
    s = softmax(a)
    p = softmax(logits)
    ph = unit(p)
    w = ph @ ph.T
    rowsum = w.sum(axis=1, keepdims=True)
    q = w / rowsum
    value = np.mean(np.sum(-np.log(s + eps) * q, axis=1))
    return value, dict(s=s, p=p, ph=ph, w=w, rowsum=rowsum)


def analytic_logit_grad(feat, logits, tau, eps=1e-7):
    """dCLID/dW_ij = -log(S_ij + eps) / (n * rowsum_i) (the detached row sum), chained to
    the logits."""
    n = len(feat)
    _, parts = reference_clid(feat, logits, tau, eps)
    g_w = -np.log(parts["s"] + eps) / (n * parts["rowsum"])         # [n, n]
    g_ph = (g_w + g_w.T) @ parts["ph"]                                 # W = ph ph^T
    p = parts["p"]
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    ph = parts["ph"]
    g_p = (g_ph - ph * np.sum(g_ph * ph, axis=1, keepdims=True)) / norm  # ph = p / |p|
    return p * (g_p - np.sum(g_p * p, axis=1, keepdims=True))          # p = softmax(z)
