"""float16 training: loss scaling through the second-order meta step, and step skipping."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from clid_tf.models import backbones
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf import metanets
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.metanets import vri
from tests.helpers import small_models as helpers

ROUTES = [("tape", "full"), ("recompute", "full"), ("jvp", "full"), ("tape", "last_layer")]


def _flat(grads):
    return np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in grads])


def _warm_adam_step(backbone):
    """The 'optimizer' virtual step of an Adam after two real updates."""
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(backbone.trainable_variables)
    for _ in range(2):
        optimizer.apply([tf.ones_like(v) * 0.1 for v in backbone.trainable_variables],
                        backbone.trainable_variables)
    return lookahead.OptimizerStep(optimizer, weight_decay=0.01)


@pytest.mark.parametrize("meta_net_kind,virtual_step", [
    ("wnet", "sgd"), ("vri", "sgd"), ("wnet", "optimizer")])
@pytest.mark.parametrize("meta_grad,scope", ROUTES)
def test_scaled_meta_gradients_are_the_meta_scale_times_the_true_ones(meta_grad, scope,
                                                                     meta_net_kind,
                                                                     virtual_step):
    """In float64 (no rounding to hide behind) loss scales change nothing but the factor
    S_m, also for VRI, whose KL regulariser does not pass through the virtual step, and
    for the virtual step of a warm Adam, whose D depends on the (unscaled) gradient."""
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier(hidden=5)
        backbone.head = backbone.get_layer("dense2")
        batch, meta_batch = helpers.batches(batch=10, meta=7)
        objective = objectives.meta_objective("clid", tau=0.5)
        step = (lookahead.Sgd(tf.constant(0.3, tf.float64)) if virtual_step == "sgd"
                else _warm_adam_step(backbone))
        results = []
        for scaling in (loss_scaling.LossScaling(),  # none
                        loss_scaling.LossScaling(tf.constant(2.0**9, tf.float64),
                                                 tf.constant(2.0**5, tf.float64))):
            meta_net = (helpers.weight_net() if meta_net_kind == "wnet"  # same noise draws
                        else vri.VRINet(3, 5, hidden=(16, 8, 8), kl_weight=0.5, seed=0))
            results.append(virtual.meta_gradients(
                backbone, meta_net, batch, meta_batch, step=step, meta_objective=objective,
                meta_grad=meta_grad, scope=scope, scaling=scaling))
        plain, scaled = results
        np.testing.assert_allclose(scaled.meta_loss.numpy(), plain.meta_loss.numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(_flat(scaled.meta_grads), 2.0**5 * _flat(plain.meta_grads),
                                   rtol=1e-9, atol=1e-15)
        assert np.abs(_flat(plain.meta_grads)).max() > 1e-6


def _float16_and_float32_twins():
    build = lambda policy: backbones.build(  # noqa: E731
        "small_cnn", num_classes=10, input_shape=(8, 8, 1), mean=(0.3,), std=(0.4,), seed=0,
        dtype_policy=policy)
    reference, half = build("float32"), build("mixed_float16")
    for h, r in zip(half.weights, reference.weights):
        h.assign(r)
    return reference, half


@pytest.mark.parametrize("meta_grad", ["tape", "recompute", "jvp"])
def test_loss_scaling_rescues_a_float16_hypergradient_that_underflows(meta_grad):
    """A meta objective of small magnitude (1e-4 CLID) makes the second-order float16 pass
    underflow: unscaled, the hypergradient is far from float32's; scaled, it is close."""
    reference, half = _float16_and_float32_twins()
    meta_net = metanets.build("wnet", num_classes=10,
                                         feature_dim=reference.feature_dim, vri_kl=0.0, seed=0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (64, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 64).astype(np.int32)}
    meta_batch = {"image": rng.integers(0, 256, (32, 8, 8, 1)).astype(np.float32)}
    clid = objectives.meta_objective("clid", tau=0.5)
    small = lambda f, z, y: 1e-4 * clid(f, z, y)  # noqa: E731

    def grads(backbone, scaling=loss_scaling.LossScaling()):
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch,
                                        step=lookahead.Sgd(tf.constant(0.1)),
                                        meta_objective=small, meta_grad=meta_grad,
                                        scaling=scaling)
        return _flat(result.meta_grads) / float(scaling.meta_seed(tf.float32))

    truth = grads(reference)
    error = lambda g: np.linalg.norm(g - truth) / np.linalg.norm(truth)  # noqa: E731
    scale = tf.constant(2.0**10)
    assert error(grads(half)) > 0.3
    assert error(grads(half, loss_scaling.LossScaling(scale, scale))) < 0.1


def _float16_model(meta_grad="tape"):
    return helpers.small_cnn_meta_model("mixed_float16", meta_grad)


@pytest.mark.parametrize("virtual_step,meta_every", [("sgd", 1), ("optimizer", 1), ("sgd", 2)])
def test_float16_model_wraps_both_optimizers_and_reports_the_scales(virtual_step, meta_every):
    model, data = _float16_model()
    model.virtual_step, model.meta_every = virtual_step, meta_every  # read when traced
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.meta_optimizer, keras.optimizers.LossScaleOptimizer)
    step = tf.function(model.train_step)
    for _ in range(2):
        logs = step(data)
    assert float(logs["loss_scale"]) == 2.0**15 and float(logs["meta_loss_scale"]) == 2.0**15
    assert np.isfinite(float(logs["meta_clid"]))
    assert int(model.optimizer.iterations) == 2
    assert int(model.meta_optimizer.iterations) == 2 // meta_every


@pytest.mark.parametrize("meta_grad", ["tape", "recompute", "jvp"])
def test_overflowing_steps_are_skipped_and_only_the_guilty_scale_halves(meta_grad):
    model, data = _float16_model(meta_grad)
    step = tf.function(model.train_step)
    theta = helpers.snapshot(model.backbone.trainable_variables)
    phi = helpers.snapshot(model.meta_net.trainable_variables)

    # S_t overflows the training backward: the virtual step is inf, so the meta step is
    # skipped too, but the meta scale is not to blame and stays.
    model.optimizer.dynamic_scale.assign(2.0**60)
    model.meta_optimizer.dynamic_scale.assign(2.0**10)
    logs = step(data)
    for before, v in zip(theta + phi, model.backbone.trainable_variables
                         + model.meta_net.trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())  # skipped: nothing moved
    assert float(model.optimizer.dynamic_scale) == 2.0**59
    assert float(model.meta_optimizer.dynamic_scale) == 2.0**10
    assert int(model.optimizer.iterations) == 0 and int(model.meta_optimizer.iterations) == 0
    assert float(logs["meta_clid"]) == 0.0  # no finite meta loss averaged in yet

    # S_m overflows the meta backward only: phi stays, theta takes its step.
    model.optimizer.dynamic_scale.assign(2.0**10)
    model.meta_optimizer.dynamic_scale.assign(2.0**60)
    step(data)
    assert float(model.optimizer.dynamic_scale) == 2.0**10
    assert float(model.meta_optimizer.dynamic_scale) == 2.0**59
    assert int(model.optimizer.iterations) == 1 and int(model.meta_optimizer.iterations) == 0
    for before, v in zip(phi, model.meta_net.trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())

    for _ in range(60):  # the meta scale comes down until meta steps go through
        logs = step(data)
    assert float(logs["meta_loss_scale"]) < 2.0**40 and int(model.meta_optimizer.iterations) > 0
    assert np.isfinite(float(logs["meta_clid"])) and float(logs["meta_clid"]) > 0
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(phi, model.meta_net.trainable_variables))


def test_weight_decay_is_scaled_with_the_gradients():
    """The decay is added to the scaled gradient as wd * S * theta, so that after
    LossScaleOptimizer's division one SGD step moves theta by exactly -lr * wd * theta
    more than the same step without decay."""
    after = {}
    for weight_decay in (0.0, 0.1):
        model, data = _float16_model()
        model.weight_decay = weight_decay
        model.set_meta_active(False)
        theta = helpers.snapshot(model.backbone.trainable_variables)
        tf.function(model.train_step)(data)
        assert int(model.optimizer.iterations) == 1
        after[weight_decay] = helpers.snapshot(model.backbone.trainable_variables)
    for t, decayed, plain in zip(theta, after[0.1], after[0.0]):
        np.testing.assert_allclose(decayed - plain, -0.05 * 0.1 * t, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("meta_grad", ["tape", "recompute"])
def test_scaled_top_n_meta_gradients_are_the_meta_scale_times_the_true_ones(meta_grad):
    """The same for the meta scope top:2 of a real ResNet-32 (float32, 8x8 images: power-of-2
    scales commute with rounding, so the factor is exact up to summation order)."""
    net = backbones.build("resnet32", num_classes=3, input_shape=(8, 8, 1), mean=(0.3,),
                          std=(0.4,), seed=0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 3, 8).astype(np.int32)}
    meta_batch = {"image": rng.integers(0, 256, (6, 8, 8, 1)).astype(np.float32)}
    results = [virtual.meta_gradients(
        net, helpers.weight_net(), batch, meta_batch, step=lookahead.Sgd(tf.constant(0.3)),
        meta_objective=objectives.meta_objective("clid", tau=0.5), meta_grad=meta_grad,
        scope="top:2", scaling=scaling)
        for scaling in (loss_scaling.LossScaling(),
                        loss_scaling.LossScaling(tf.constant(2.0**9), tf.constant(2.0**5)))]
    plain, scaled = results
    np.testing.assert_allclose(_flat(scaled.meta_grads), 2.0**5 * _flat(plain.meta_grads),
                               rtol=1e-5, atol=1e-12)
    assert np.abs(_flat(plain.meta_grads)).max() > 1e-6
