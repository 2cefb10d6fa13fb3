"""User sample weights s_i in the meta-nets' training losses, against numpy: WNet
sum_i s_i w~_i CE_i (w~ normalised without s), unnormalised mean_i s_i w_i CE_i, VRI
mean_i s_i CE(w_i * z_i); and the meta-nets' dtype under mixed and float64 policies."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.metanets import vri
from clid_tf.metanets import wnet
from tests.helpers import small_models

K, D, B = 4, 6, 8


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(B, K)), tf.float32),
            tf.constant(rng.normal(size=(B, D)), tf.float32),
            tf.constant(rng.integers(0, K, B), tf.int32),
            rng.random(B).astype(np.float32) * 2)


def _ce(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(len(labels)), labels]


@pytest.mark.parametrize("normalize", [True, False])
def test_wnet_scales_each_term_by_its_sample_weight(normalize):
    logits, features, labels, s = _batch()
    net = wnet.WeightNet(seed=0, normalize=normalize)
    out = net.weighted_loss(logits, features, labels, sample_weight=s)
    ce = _ce(logits.numpy(), labels.numpy())
    w = net(tf.constant(ce)).numpy()
    want = np.sum(s * w * ce) / np.sum(w) if normalize else np.mean(s * w * ce)
    np.testing.assert_allclose(out.loss.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(out.weights.numpy(), w, rtol=1e-6)  # s never enters w
    ones = net.weighted_loss(logits, features, labels, sample_weight=np.ones(B, np.float32))
    plain = net.weighted_loss(logits, features, labels)
    np.testing.assert_allclose(ones.loss.numpy(), plain.loss.numpy(), rtol=1e-6)


def test_vri_scales_each_rectified_term_by_its_sample_weight():
    logits, features, labels, s = _batch(1)
    net = vri.VRINet(K, D, seed=3)
    state = net.noise.state.numpy()
    out = net.weighted_loss(logits, features, labels, sample_weight=s)
    net.noise.state.assign(state)  # the same eps again
    plain = net.weighted_loss(logits, features, labels)
    w = out.weights.numpy()
    np.testing.assert_allclose(w, plain.weights.numpy(), rtol=1e-6)
    want = np.mean(s * _ce(w * logits.numpy(), labels.numpy()))
    np.testing.assert_allclose(out.loss.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(out.regularizer.numpy(), plain.regularizer.numpy(), rtol=1e-6)


def test_meta_nets_compute_in_float32_under_a_mixed_policy_and_follow_floatx_otherwise():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = [wnet.WeightNet(), vri.VRINet(K, D)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(v.dtype == "float32" for net in mixed for v in net.trainable_variables)
    assert all(net.compute_dtype == "float32" for net in mixed)
    with small_models.floatx("float64"):
        wide = [wnet.WeightNet(), vri.VRINet(K, D)]
    assert all(v.dtype == "float64" for net in wide for v in net.trainable_variables)
