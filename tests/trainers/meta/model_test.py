"""One MetaReweightModel.train_step against a reference step written with plain TF ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.core import clid as clid_lib
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import objectives
from clid_tf.core import schedules
from clid_tf.core import virtual
from tests.helpers import small_models as helpers

LR, MOMENTUM, WD = 0.2, 0.9, 5e-4
META_LR, META_WD = 0.05, 5e-4
BN_EPS, BN_MOMENTUM = 1e-5, 0.9


def _ref_forward(theta, x):
    """Dense -> BN (batch statistics) -> ReLU -> Dense with explicit tensors."""
    w1, b1, gamma, beta, w2, b2 = theta
    h = x @ w1 + b1
    mean, var = tf.nn.moments(h, axes=[0])
    features = tf.nn.relu((h - mean) / tf.sqrt(var + BN_EPS) * gamma + beta)
    return features @ w2 + b2, features, mean, var


def _ref_wnet(phi, losses):
    a1, c1, a2, c2 = phi
    hidden = tf.nn.relu(tf.stop_gradient(losses)[:, None] @ a1 + c1)
    return tf.squeeze(tf.sigmoid(hidden @ a2 + c2), -1)


def _ref_weighted(theta, phi, x, y):
    logits, features, mean, var = _ref_forward(theta, x)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    w = _ref_wnet(phi, losses)
    return tf.reduce_sum(w / tf.reduce_sum(w) * losses), (mean, var)


def reference_step(theta, phi, moving, batch, meta_batch, virtual_wd=0.0):
    """Section 2.0 by hand: virtual step, SGD meta step, momentum-SGD actual step.

    virtual_wd: coupled decay in the virtual step, as the first step of the real
    momentum optimizer has it (virtual_step='optimizer'); 0 is the paper's plain step.
    """
    x, y = batch["image"], batch["label"]
    with tf.GradientTape() as outer:
        outer.watch(phi)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            virtual_loss, _ = _ref_weighted(theta, phi, x, y)
        grads = inner.gradient(virtual_loss, theta)
        theta_prime = [t - LR * (g + virtual_wd * t) for t, g in zip(theta, grads)]
        meta_logits, meta_features, _, _ = _ref_forward(theta_prime, meta_batch["image"])
        meta_loss = clid_lib.clid(meta_features, meta_logits, tau=0.5)
    meta_grads = outer.gradient(meta_loss, phi)
    phi_new = [p - META_LR * (g + META_WD * p) for p, g in zip(phi, meta_grads)]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss, (mean, var) = _ref_weighted(theta, phi_new, x, y)
    grads = tape.gradient(loss, theta)
    theta_new = [t - LR * (g + WD * t) for t, g in zip(theta, grads)]  # first momentum step
    moving_mean, moving_var = moving
    moving_new = [BN_MOMENTUM * moving_mean + (1 - BN_MOMENTUM) * mean,
                  BN_MOMENTUM * moving_var + (1 - BN_MOMENTUM) * var]
    return theta_new, phi_new, moving_new, float(meta_loss), float(loss)


def _build(seed=0, meta_grad="jvp", virtual_step="sgd", lr=LR, **kwargs):
    backbone = helpers.tiny_classifier(seed=seed)
    meta_net = helpers.weight_net(seed=seed)
    model = meta_model.MetaReweightModel(
        backbone, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5),
        meta_grad=meta_grad, virtual_step=virtual_step, weight_decay=WD,
        meta_weight_decay=META_WD, **kwargs)
    model.compile(keras.optimizers.SGD(lr, momentum=MOMENTUM), keras.optimizers.SGD(META_LR))
    return model


@pytest.mark.parametrize("meta_grad,virtual_step", [
    ("jvp", "sgd"), ("tape", "sgd"), ("recompute", "sgd"), ("recompute", "optimizer")])
def test_train_step_matches_reference_step(meta_grad, virtual_step):
    with helpers.floatx("float64"):
        model = _build(meta_grad=meta_grad, virtual_step=virtual_step)
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        backbone, meta_net = model.backbone, model.meta_net
        theta = [tf.constant(v.numpy()) for v in backbone.trainable_variables]
        phi = [tf.constant(v.numpy()) for v in meta_net.trainable_variables]
        moving = [tf.constant(v.numpy()) for v in backbone.non_trainable_variables]
        want_theta, want_phi, want_moving, want_meta, want_loss = reference_step(
            theta, phi, moving, batch, meta_batch,
            virtual_wd=WD if virtual_step == "optimizer" else 0.0)

        logs = tf.function(model.train_step)({"train": batch, "meta": meta_batch})

        for got, want in zip(backbone.trainable_variables, want_theta):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        for got, want in zip(meta_net.trainable_variables, want_phi):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        for got, want in zip(backbone.non_trainable_variables, want_moving):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(logs["meta_clid"]), want_meta,
                                   rtol=1e-6)  # float32 trackers
        np.testing.assert_allclose(float(logs["loss"]), want_loss, rtol=1e-6)
        # The meta-net moved before the actual step: phi changed, and the actual step used it.
        assert any(not np.allclose(a.numpy(), b.numpy())
                   for a, b in zip(meta_net.trainable_variables, phi))


def test_warmup_is_plain_cross_entropy_and_leaves_meta_net_alone():
    model = _build()
    model.set_meta_active(False)
    batch, meta_batch = helpers.batches()
    phi0 = helpers.snapshot(model.meta_net.trainable_variables)
    theta0 = helpers.snapshot(model.backbone.trainable_variables)
    logs = tf.function(model.train_step)({"train": batch, "meta": meta_batch})
    for a, b in zip(model.meta_net.trainable_variables, phi0):
        np.testing.assert_array_equal(a.numpy(), b)
    assert "meta_clid" not in logs
    assert any(not np.array_equal(a.numpy(), b)
               for a, b in zip(model.backbone.trainable_variables, theta0))
    model.set_meta_active(True)  # after warm-up, meta updates begin
    tf.function(model.train_step)({"train": batch, "meta": meta_batch})
    assert any(not np.array_equal(a.numpy(), b)
               for a, b in zip(model.meta_net.trainable_variables, phi0))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_plain_ce_model_matches_manual_sgd(weight_decay):
    """With weight decay, BN and bias variables exempt (`no_decay`): only the two kernels
    (theta[0] and theta[4]) decay."""
    backbone = helpers.tiny_classifier()
    model = meta_model.MetaReweightModel(backbone, weight_decay=weight_decay,
                                         no_decay=lookahead.bn_and_bias(backbone))
    model.compile(keras.optimizers.SGD(LR))
    batch, _ = helpers.batches()
    theta = [tf.constant(v.numpy()) for v in backbone.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        logits, _, _, _ = _ref_forward(theta, batch["image"])
        loss = tf.reduce_mean(objectives.per_sample_ce(logits, batch["label"]))
    decay = [weight_decay * (i in (0, 4)) for i in range(len(theta))]
    want = [t - LR * (g + d * t) for t, g, d in zip(theta, tape.gradient(loss, theta), decay)]
    tf.function(model.train_step)({"train": batch})
    for got, w in zip(backbone.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


def test_monitoring_separates_clean_and_noisy_weights():
    model = _build()
    batch, meta_batch = helpers.batches(batch=8)
    batch["is_noisy"] = np.array([True, False] * 4)
    backbone, meta_net = model.backbone, model.meta_net
    theta = [tf.constant(v.numpy()) for v in backbone.trainable_variables]
    phi = [tf.constant(v.numpy()) for v in meta_net.trainable_variables]
    moving = [tf.constant(v.numpy()) for v in backbone.non_trainable_variables]
    logs = tf.function(model.train_step)({"train": batch, "meta": meta_batch})
    # The logged weights are the updated meta-net's raw weights in the actual step.
    _, phi_new, _, _, _ = reference_step(theta, phi, moving, batch, meta_batch)
    logits, _, _, _ = _ref_forward(theta, batch["image"])
    raw = _ref_wnet(phi_new, tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=batch["label"], logits=logits)).numpy()
    np.testing.assert_allclose(float(logs["weight_noisy"]), raw[0::2].mean(), rtol=1e-4)
    np.testing.assert_allclose(float(logs["weight_clean"]), raw[1::2].mean(), rtol=1e-4)


def test_meta_step_with_the_optimizer_virtual_step_has_no_side_effects():
    """After steps 1-2 (virtual and meta step), theta, every slot of the classifier
    optimizer, its iteration counter and the BN statistics are bit-identical to before,
    and phi changed; the momentum buffer is warm (one real step)."""
    with helpers.floatx("float64"):
        model = _build(meta_grad="tape", virtual_step="optimizer")
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        tf.function(model.train_step)({"train": batch, "meta": meta_batch})
        backbone, optimizer = model.backbone, model.optimizer
        watched = backbone.trainable_variables + backbone.non_trainable_variables
        before = helpers.snapshot(watched + optimizer.variables)
        phi = helpers.snapshot(model.meta_net.trainable_variables)
        assert int(optimizer.iterations) == 1 and np.abs(optimizer.momentums[0].numpy()).max() > 0

        tf.function(lambda: model._virtual_and_meta_step(  # pylint: disable=protected-access
            batch, meta_batch, virtual.train_forward(backbone, batch["image"]),
            loss_scaling.LossScaling()))()

        for b, v in zip(before, watched + optimizer.variables):
            np.testing.assert_array_equal(b, v.numpy())
        assert any(not np.array_equal(a, v.numpy())
                   for a, v in zip(phi, model.meta_net.trainable_variables))


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
def test_the_virtual_step_uses_the_scheduled_lr_of_its_own_step(virtual_step):
    """EpochMultiStep halves the lr at iteration 2 (an epoch boundary): each step's virtual
    step uses that step's lr, exactly like a twin whose constant lr is set by hand before
    each step; a twin that keeps the first lr ends elsewhere."""
    with helpers.floatx("float64"):
        schedule = schedules.EpochMultiStep(0.25, milestones=[1], gamma=0.5,
                                            steps_per_epoch=2)
        model = _build(meta_grad="tape", virtual_step=virtual_step, lr=schedule)
        twin = _build(meta_grad="tape", virtual_step=virtual_step, lr=0.25)
        stale = _build(meta_grad="tape", virtual_step=virtual_step, lr=0.25)
        steps = [tf.function(m.train_step) for m in (model, twin, stale)]
        for k in range(3):
            batch, meta_batch = helpers.batches(batch=8, meta=6, seed=k)
            twin.optimizer.learning_rate = 0.25 if k < 2 else 0.125
            assert float(model.optimizer.learning_rate) == float(twin.optimizer.learning_rate)
            for step in steps:
                step({"train": batch, "meta": meta_batch})
            for a, b in zip(model.meta_net.trainable_variables + model.backbone.weights,
                            twin.meta_net.trainable_variables + twin.backbone.weights):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)
        assert not np.allclose(model.meta_net.trainable_variables[0].numpy(),
                               stale.meta_net.trainable_variables[0].numpy(), rtol=1e-6)


def test_virtual_step_choices_are_checked():
    with pytest.raises(ValueError, match="unknown virtual step"):
        _build(virtual_step="adam")
    model = meta_model.MetaReweightModel(
        helpers.tiny_classifier(), helpers.weight_net(), virtual_step="optimizer",
        meta_objective=objectives.meta_objective("clid", tau=0.5))
    with pytest.raises(ValueError, match="cannot be copied: it is RMSprop"):
        model.compile(keras.optimizers.RMSprop(0.1), keras.optimizers.SGD(0.1))


def test_meta_every_k_updates_phi_only_when_the_iteration_is_a_multiple_of_k():
    """meta_every=3: phi moves on iterations 0 and 3 only, theta on every step, one trace;
    the logged meta loss averages the meta steps only."""
    model = _build(meta_grad="recompute", meta_every=3)
    step = tf.function(model.train_step)
    logged = []
    for k in range(5):
        batch, meta_batch = helpers.batches(batch=8, meta=6, seed=k)
        theta = helpers.snapshot(model.backbone.trainable_variables)
        phi = helpers.snapshot(model.meta_net.trainable_variables)
        assert int(model.optimizer.iterations) == k
        logged.append(float(step({"train": batch, "meta": meta_batch})["meta_clid"]))
        phi_moved = any(not np.array_equal(a, v.numpy())
                        for a, v in zip(phi, model.meta_net.trainable_variables))
        assert phi_moved == (k % 3 == 0), k
        assert all(not np.array_equal(a, v.numpy())
                   for a, v in zip(theta, model.backbone.trainable_variables)), k
    assert model.trace_count == 1 and int(model.meta_optimizer.iterations) == 2
    assert logged[1] == logged[2] == logged[0] and logged[4] == logged[3] != logged[0]


def test_meta_every_steps_are_the_meta_step_then_the_actual_step_with_phi_fixed():
    """meta_every=2 on a float64 model: the first step equals the meta_every=1 step; the
    second keeps phi and takes the heavy-ball step of the weighted loss with that phi."""
    with helpers.floatx("float64"):
        every, each = _build(meta_every=2), _build(meta_every=1)
        steps = [tf.function(m.train_step) for m in (every, each)]
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        for step in steps:
            step({"train": batch, "meta": meta_batch})
        for a, b in zip(every.weights + every.optimizer.variables,
                        each.weights + each.optimizer.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)

        batch, meta_batch = helpers.batches(batch=8, meta=6, seed=1)
        theta = [tf.constant(v.numpy()) for v in every.backbone.trainable_variables]
        phi = [tf.constant(v.numpy()) for v in every.meta_net.trainable_variables]
        momentum = [m.numpy() for m in every.optimizer.momentums]
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss, _ = _ref_weighted(theta, phi, batch["image"], batch["label"])
        mu = float(np.float32(MOMENTUM))  # Keras casts the momentum through float32
        want = [t + mu * m - LR * (g + WD * t)
                for t, m, g in zip(theta, momentum, tape.gradient(loss, theta))]
        steps[0]({"train": batch, "meta": meta_batch})
        for a, b in zip(every.meta_net.trainable_variables, phi):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(every.backbone.trainable_variables, want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


def test_meta_every_and_the_optimizer_virtual_step_compile_with_xla():
    """Also after CLID has seen other meta batch shapes (as the per-epoch selection does):
    a shape-relaxed CLID trace would not compile inside the meta_every tf.cond."""
    for n in (3, 5):
        clid_lib.clid_xla(tf.ones([n, 2]), tf.ones([n, 2]))
    keras.utils.set_random_seed(0)
    net = backbones.build("mlp", num_classes=3, input_shape=(4,), mean=(0.0,) * 4,
                          std=(1.0,) * 4, seed=0)
    model = meta_model.MetaReweightModel(
        net, helpers.weight_net(), meta_objective=objectives.meta_objective("clid", tau=0.5),
        virtual_step="optimizer", meta_every=2)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                  keras.optimizers.Adam(1e-3), jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    data = {"train": {"image": x, "label": (x[:, 0] > 0).astype(np.int32)},
            "meta": {"image": x[:8]}}
    history = model.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=5,
                        epochs=1, verbose=0)
    assert model.trace_count == 1
    assert int(model.optimizer.iterations) == 5 and int(model.meta_optimizer.iterations) == 3
    assert all(np.isfinite(v[-1]) for v in history.history.values())


def test_meta_every_must_be_a_positive_integer():
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="meta_every must be an integer >= 1"):
            _build(meta_every=bad)
