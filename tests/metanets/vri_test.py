"""VRI meta-net: shapes, sampling, stop-gradients, the loss and KL against numpy, and a
meta-gradient / one-step run through `virtual` and `MetaReweightModel`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.core import lookahead
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.metanets import vri

K, D, B = 3, 8, 6


def _inputs(seed: int = 0, batch: int = B, k: int = K, d: int = D):
    rng = np.random.default_rng(seed)
    logits = tf.constant(rng.normal(size=(batch, k)), tf.float32)
    features = tf.constant(rng.normal(size=(batch, d)), tf.float32)
    labels = tf.constant(rng.integers(0, k, size=batch), tf.int32)
    return logits, features, labels


def _np_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def _np_kl(mu_q, lv_q, mu_p, lv_p):
    var_q, var_p = np.exp(lv_q), np.exp(lv_p)
    return np.mean(np.log(np.sqrt(var_p / var_q)) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p)
                   - 0.5)


def test_shapes_and_range():
    net = vri.VRINet(K, D, seed=0)
    logits, features, labels = _inputs()
    mu, log_var = net(features, labels)
    out = net.weighted_loss(logits, features, labels)
    assert mu.shape == (B, K) and log_var.shape == (B, K)
    assert out.weights.shape == (B, K) and out.loss.shape == () and out.regularizer.shape == ()
    w = out.weights.numpy()
    assert np.all(w > 0) and np.all(w < 1)


def test_architecture():
    net = vri.VRINet(K, D, seed=0)
    kernels = [tuple(layer.kernel.shape) for layer in net.hidden_layers]
    assert kernels == [(D + 64, 1024), (1024, 512), (512, 512)]
    assert tuple(net.mean_head.kernel.shape) == (512, K)
    assert tuple(net.log_var_head.kernel.shape) == (512, K)
    assert tuple(net.embedding.embeddings.shape) == (K, 64)
    for layer in [*net.hidden_layers, net.mean_head, net.log_var_head]:
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    # Xavier-normal: std sqrt(2 / (fan_in + fan_out)).
    std = np.std(net.hidden_layers[0].kernel.numpy())
    assert abs(std / np.sqrt(2.0 / (D + 64 + 1024)) - 1.0) < 0.05
    assert not np.allclose(net.mean_head.kernel.numpy(), net.log_var_head.kernel.numpy())


def test_eps_resampled_and_seeded():
    logits, features, labels = _inputs()
    net = vri.VRINet(K, D, seed=3)
    first = [net.weighted_loss(logits, features, labels).weights.numpy() for _ in range(2)]
    assert not np.allclose(first[0], first[1])
    again = vri.VRINet(K, D, seed=3)
    second = [again.weighted_loss(logits, features, labels).weights.numpy() for _ in range(2)]
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_weights_and_loss_match_numpy():
    logits, features, labels = _inputs(1)
    net = vri.VRINet(K, D, seed=5)
    mu, log_var = (t.numpy() for t in net(features, labels))
    mu_p, log_var_p = (t.numpy() for t in net.prior(features))
    # The net's first draw equals a fresh generator's first draw of the same dtype (the
    # compute dtype follows the global Keras dtype policy).
    eps = keras.random.normal((B, K), dtype=net.compute_dtype,
                              seed=keras.random.SeedGenerator(5)).numpy()
    out = net.weighted_loss(logits, features, labels)
    w = out.weights.numpy()
    np.testing.assert_allclose(w, 1 / (1 + np.exp(-(mu + np.exp(0.5 * log_var) * eps))),
                               rtol=1e-5, atol=1e-6)
    expected = np.mean(_np_ce(w * logits.numpy(), labels.numpy()))
    np.testing.assert_allclose(out.loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out.regularizer.numpy(),
                               0.01 * _np_kl(mu, log_var, mu_p, log_var_p), rtol=1e-4)


def test_prior_differs_from_posterior():
    _, features, labels = _inputs(2)
    net = vri.VRINet(K, D, seed=0)
    assert not np.allclose(net(features, labels)[0].numpy(), net.prior(features)[0].numpy())


def test_kl_divergence_closed_form():
    rng = np.random.default_rng(4)
    args = [rng.normal(size=(5, 4)) for _ in range(4)]
    got = vri.kl_divergence(*(tf.constant(a, tf.float64) for a in args))
    np.testing.assert_allclose(got.numpy(), _np_kl(*args), rtol=1e-10)
    assert got.numpy() > 0
    mu, lv = tf.constant(args[0]), tf.constant(args[1])
    np.testing.assert_allclose(vri.kl_divergence(mu, lv, mu, lv).numpy(), 0.0, atol=1e-12)


def test_stop_gradient_on_features_not_logits():
    logits, features, labels = _inputs()
    net = vri.VRINet(K, D, seed=0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, features])
        out = net.weighted_loss(logits, features, labels)
        mu, log_var = net(features, labels)
    assert tape.gradient(out.loss, features) is None
    assert tape.gradient(out.regularizer, features) is None
    assert tape.gradient(mu, features) is None and tape.gradient(log_var, features) is None
    g_logits = tape.gradient(out.loss, logits)
    assert g_logits is not None and np.any(g_logits.numpy() != 0)
    assert tape.gradient(out.regularizer, logits) is None


def _backbone():
    return backbones.build("mlp", num_classes=K, input_shape=(4,), mean=(0,) * 4,
                           std=(1,) * 4, seed=0)


def _batches(seed: int = 0, batch: int = 8, n: int = 6):
    rng = np.random.default_rng(seed)
    train = {"image": tf.constant(rng.normal(size=(batch, 4)), tf.float32),
             "label": tf.constant(rng.integers(0, K, size=batch), tf.int32)}
    meta = {"image": tf.constant(rng.normal(size=(n, 4)), tf.float32)}
    return train, meta


def test_regularizer_reaches_phi_not_theta():
    backbone = _backbone()
    net = vri.VRINet(K, backbone.feature_dim, seed=0)
    train, _ = _batches()
    with tf.GradientTape(persistent=True) as tape:
        logits, features = backbone(train["image"], training=True)
        out = net.weighted_loss(logits, features, train["label"])
    theta_grads = tape.gradient(out.regularizer, backbone.trainable_variables)
    assert all(g is None for g in theta_grads)
    phi_grads = tape.gradient(out.regularizer, net.trainable_variables)
    dense = [tf.convert_to_tensor(g).numpy() for g in phi_grads if g is not None]
    assert dense and any(np.any(g != 0) for g in dense)
    assert np.any(tape.gradient(out.regularizer, net.hidden_layers[0].kernel).numpy() != 0)


def test_meta_gradients_end_to_end():
    backbone = _backbone()
    net = vri.VRINet(K, backbone.feature_dim, seed=0)
    train, meta = _batches()
    result = virtual.meta_gradients(
        backbone, net, train, meta, step=lookahead.Sgd(tf.constant(0.1)),
        meta_objective=objectives.meta_objective("clid", tau=0.5))
    assert np.isfinite(result.meta_loss.numpy())
    grads = {v.path: g for v, g in zip(net.trainable_variables, result.meta_grads)}
    assert len(grads) == len(net.trainable_variables)
    for path, g in grads.items():
        assert g is not None, path
        assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy())), path
    for layer in net.hidden_layers:
        g = grads[layer.kernel.path]
        assert np.any(tf.convert_to_tensor(g).numpy() != 0), layer.name


def test_meta_model_one_step_updates_phi_and_theta():
    backbone = _backbone()
    net = vri.VRINet(K, backbone.feature_dim, seed=0)
    model = meta_model.MetaReweightModel(
        backbone, net, meta_objective=objectives.meta_objective("clid", tau=0.5))
    model.compile(keras.optimizers.SGD(0.1), keras.optimizers.Adam(1e-3))
    train, meta = _batches(1)
    phi = [v.numpy() for v in net.trainable_variables]
    theta = [v.numpy() for v in backbone.trainable_variables]
    logs = tf.function(model.train_step)({"train": train, "meta": meta})
    assert all(np.isfinite(float(v)) for v in logs.values())
    phi_changed = [not np.array_equal(a, v.numpy()) for a, v in zip(phi, net.trainable_variables)]
    theta_changed = [not np.array_equal(a, v.numpy())
                     for a, v in zip(theta, backbone.trainable_variables)]
    assert all(phi_changed) and all(theta_changed)


def test_without_regulariser_same_loss_and_weights_and_no_prior():
    logits, features, labels = _inputs()
    full = vri.VRINet(K, D, seed=5).weighted_loss(logits, features, labels)
    light = vri.VRINet(K, D, seed=5).weighted_loss(logits, features, labels,
                                                   regularize=False)
    np.testing.assert_array_equal(full.weights.numpy(), light.weights.numpy())
    np.testing.assert_allclose(full.loss.numpy(), light.loss.numpy(), rtol=1e-7)
    assert float(light.regularizer) == 0.0 and float(full.regularizer) > 0.0


def test_kl_weight_zero_is_the_reference_equivalent_no_kl():
    """--vri_kl=0: the KL adds nothing to phi's objective (the authors' KL changes
    nothing either: ruofanhu/CLID-MU@5cd0608, main_vri.py: train()), so the meta gradients are those
    of the meta loss alone."""
    backbone = _backbone()
    train, meta = _batches(2)
    objective = objectives.meta_objective("clid", tau=0.5)
    results = {}
    for kl_weight in (0.0, 0.01):
        net = vri.VRINet(K, backbone.feature_dim, kl_weight=kl_weight, seed=0)
        results[kl_weight] = virtual.meta_gradients(backbone, net, train, meta,
                                                    step=lookahead.Sgd(tf.constant(0.1)), meta_objective=objective)
    logits, features = backbone(train["image"], training=True)
    zero = vri.VRINet(K, backbone.feature_dim, kl_weight=0.0, seed=0)
    assert float(zero.weighted_loss(logits, features, train["label"]).regularizer) == 0.0
    # The two meta losses differ by exactly 0.01 * KL, and the KL moves phi's gradient.
    with_kl, without = results[0.01], results[0.0]
    mu, log_var = zero(features, train["label"])
    kl = vri.kl_divergence(mu, log_var, *zero.prior(features))
    np.testing.assert_allclose(float(with_kl.meta_loss) - float(without.meta_loss),
                               0.01 * float(kl), rtol=1e-4)
    assert float(kl) > 0
    assert any(not np.allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy())
               for a, b in zip(with_kl.meta_grads, without.meta_grads))
