"""The hypergradient through the virtual step against finite differences (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.core import lookahead
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import meta_scope
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.metanets import vri
from tests.helpers import gradients
from tests.helpers import small_models as helpers





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
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch,
                                        step=lookahead.Sgd(lr), meta_objective=objective,
                                        meta_grad=meta_grad)
        if objective_name == "clid":
            objective, base = gradients.clid_surrogate(backbone, meta_net, batch, meta_batch,
                                              lookahead.Sgd(lr))
            np.testing.assert_allclose(  # the surrogate has CLID's value at the base point
                objective(base["f"], base["z"], None).numpy(), result.meta_loss.numpy())
        grads = [g.numpy() for g in result.meta_grads]
        assert any(np.abs(g).max() > 1e-8 for g in grads)
        gradients.directional_check(meta_net, grads, lambda: gradients.meta_loss_at(
            backbone, meta_net, batch, meta_batch, lookahead.Sgd(lr), objective))


@pytest.mark.parametrize("objective_name,virtual_step", [
    ("ce_noisy", "sgd"), ("entropy", "sgd"), ("entropy", "nesterov")])
def test_last_layer_hypergradient_matches_central_differences(objective_name, virtual_step):
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier()
        backbone.head = backbone.get_layer("dense2")
        meta_net = helpers.weight_net()
        batch, meta_batch = helpers.batches(meta_labels=objective_name == "ce_noisy")
        objective = objectives.meta_objective(objective_name, tau=0.5)
        step = (lookahead.Sgd(tf.constant(0.5, tf.float64)) if virtual_step == "sgd"
                else _optimizer_step(virtual_step, backbone, warm_steps=2))
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, step=step,
                                        meta_objective=objective, scope="last_layer")
        grads = [g.numpy() for g in result.meta_grads]
        assert any(np.abs(g).max() > 1e-8 for g in grads)
        gradients.directional_check(meta_net, grads, lambda: gradients.meta_loss_at(
            backbone, meta_net, batch, meta_batch, step, objective, stepped=[-2, -1]))
        full = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, step=step,
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
                backbone, meta_net, batch, meta_batch,
                step=lookahead.Sgd(tf.constant(0.3, tf.float64)), meta_objective=objective,
                meta_grad=mode)
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
                                    step=lookahead.Sgd(tf.constant(0.1)),
                                    meta_objective=objectives.meta_objective("clid", tau=0.5))
    assert np.isfinite(result.meta_loss.numpy())
    for b, v in zip(before, backbone.non_trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    # ...while the same forward in training mode does compute new statistics.
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    _, _, updated = virtual.forward(backbone, theta, frozen, batch["image"])
    assert any(not np.allclose(u, b) for u, b in zip(updated, before))


OPTIMIZER_STEPS = [("heavy_ball", 2), ("nesterov", 2), ("adam", 0), ("adam", 2)]


def _optimizer_step(kind, backbone, warm_steps):
    """The 'optimizer' virtual step of `kind` after `warm_steps` real updates (non-zero
    momentum or Adam moments), with coupled L2 on the kernels and none on BN and biases."""
    optimizer = {"heavy_ball": lambda: keras.optimizers.SGD(0.5, momentum=0.75),
                 "nesterov": lambda: keras.optimizers.SGD(0.5, momentum=0.75, nesterov=True),
                 "adam": lambda: keras.optimizers.Adam(0.05)}[kind]()
    variables = backbone.trainable_variables
    optimizer.build(variables)
    rng = np.random.default_rng(3)
    for _ in range(warm_steps):
        optimizer.apply([tf.constant(rng.normal(size=v.shape) * 0.1) for v in variables],
                        variables)
    return lookahead.OptimizerStep(optimizer, weight_decay=0.05,
                                   no_decay=lookahead.bn_and_bias(backbone))


@pytest.mark.parametrize("kind,warm_steps", OPTIMIZER_STEPS)
def test_optimizer_virtual_step_hypergradient_matches_central_differences(kind, warm_steps):
    """dCLID(theta'(phi))/dphi by nested tapes through the optimizer's update against central
    differences: 5 entries of phi, h = 1e-5, relative error <= 1e-4."""
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier()
        meta_net = helpers.weight_net()
        batch, meta_batch = helpers.batches()
        step = _optimizer_step(kind, backbone, warm_steps)
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, step=step,
                                        meta_objective=objectives.meta_objective("clid", tau=0.5),
                                        meta_grad="tape")
        objective, _ = gradients.clid_surrogate(backbone, meta_net, batch, meta_batch, step)
        grads = [g.numpy() for g in result.meta_grads]
        gradients.entrywise_check(meta_net, grads, lambda: gradients.meta_loss_at(
            backbone, meta_net, batch, meta_batch, step, objective))
        # the optimizer's update is not the plain step: another hypergradient
        plain = virtual.meta_gradients(backbone, meta_net, batch, meta_batch,
                                       step=lookahead.Sgd(step.optimizer.learning_rate),
                                       meta_objective=objectives.meta_objective("clid", tau=0.5))
        assert not np.allclose(plain.meta_grads[0].numpy(), result.meta_grads[0].numpy())


@pytest.mark.parametrize("kind,warm_steps", OPTIMIZER_STEPS)
def test_d_scaled_routes_give_the_tape_hypergradient_of_the_optimizer_step(kind, warm_steps):
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier(hidden=5)
        batch, meta_batch = helpers.batches(batch=10, meta=7)
        step = _optimizer_step(kind, backbone, warm_steps)
        results = {mode: virtual.meta_gradients(
            backbone, helpers.weight_net(), batch, meta_batch, step=step,
            meta_objective=objectives.meta_objective("clid", tau=0.5), meta_grad=mode)
            for mode in ("tape", "recompute", "jvp")}
        assert np.abs(results["tape"].meta_grads[0].numpy()).max() > 1e-8
        for mode in ("recompute", "jvp"):
            np.testing.assert_allclose(results[mode].meta_loss.numpy(),
                                       results["tape"].meta_loss.numpy(), rtol=1e-12)
            for a, b in zip(results[mode].meta_grads, results["tape"].meta_grads):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-14)


def _tiny_residual_classifier(blocks=3, width=4, num_inputs=3, num_classes=3, seed=0):
    """x [B, 3] -> stem Dense-BN-ReLU -> `blocks` residual blocks h + Dense(ReLU(BN(Dense h)))
    -> head Dense, with the block metadata of `clid_tf.models.resnets` (`block_names`)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_inputs,))
    h = keras.layers.Dense(width, name="stem_dense")(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(h))
    names = [f"block{b}" for b in range(blocks)]
    for name in names:
        r = keras.layers.Dense(width, name=f"{name}_dense1")(h)
        r = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn")(r))
        h = keras.layers.Add()([h, keras.layers.Dense(width, name=f"{name}_dense2")(r)])
    logits = keras.layers.Dense(num_classes, name="head")(h)
    model = keras.Model(inputs, (logits, h))
    model.feature_dim, model.block_names, model.head = width, tuple(names), model.get_layer("head")
    return model


def _indices_of_top(backbone, blocks):
    """Indices of the trainable variables of the last `blocks` blocks and the head, by name."""
    top = [f"block{b}_" for b in range(len(backbone.block_names) - blocks,
                                       len(backbone.block_names))] + ["head/"]
    return [i for i, v in enumerate(backbone.trainable_variables)
            if any(v.path.startswith(prefix) for prefix in top)]


@pytest.mark.parametrize("meta_grad", ["tape", "recompute", "jvp"])
@pytest.mark.parametrize("blocks,virtual_step", [(1, "sgd"), (2, "sgd"), (1, "heavy_ball")])
def test_top_n_hypergradient_matches_central_differences(blocks, virtual_step, meta_grad):
    """top:N steps the head and the last N blocks only: exact for that restricted step,
    and another hypergradient than the full one."""
    with helpers.floatx("float64"):
        backbone = _tiny_residual_classifier()
        meta_net = helpers.weight_net()
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        objective = objectives.meta_objective("entropy", tau=0.5)
        step = (lookahead.Sgd(tf.constant(0.5, tf.float64)) if virtual_step == "sgd"
                else _optimizer_step(virtual_step, backbone, warm_steps=2))
        result = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, step=step,
                                        meta_objective=objective, meta_grad=meta_grad,
                                        scope=f"top:{blocks}")
        grads = [g.numpy() for g in result.meta_grads]
        assert any(np.abs(g).max() > 1e-8 for g in grads)
        gradients.directional_check(meta_net, grads, lambda: gradients.meta_loss_at(
            backbone, meta_net, batch, meta_batch, step, objective,
            stepped=_indices_of_top(backbone, blocks)))
        full = virtual.meta_gradients(backbone, meta_net, batch, meta_batch, step=step,
                                      meta_objective=objective, meta_grad=meta_grad)
        assert not np.allclose(full.meta_grads[0].numpy(), grads[0], rtol=1e-6)


def test_top_n_of_every_block_is_the_full_scope_and_below_the_cut_nothing_moves():
    with helpers.floatx("float64"):
        backbone = _tiny_residual_classifier()
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        step = lookahead.Sgd(tf.constant(0.5, tf.float64))
        results = [virtual.meta_gradients(
            backbone, helpers.weight_net(), batch, meta_batch, step=step,
            meta_objective=objectives.meta_objective("clid", tau=0.5), scope=scope)
            for scope in ("full", "top:3")]
        for a, b in zip(*[r.meta_grads for r in results]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

        fwd = virtual.train_forward(backbone, batch["image"])
        dz, _ = virtual.logit_gradient(virtual.for_meta_net(helpers.weight_net(),
                                                            batch["label"]),
                                       fwd.logits, fwd.features)
        stepped = virtual.stepped_indices(backbone, meta_scope.parse("top:1"))
        assert stepped == _indices_of_top(backbone, 1)
        update = virtual.virtual_update(backbone, fwd, dz, step, stepped)
        for i, (theta, theta_prime) in enumerate(zip(fwd.theta, update.theta_prime)):
            moved = not np.array_equal(theta.numpy(), theta_prime.numpy())
            assert moved == (i in stepped), backbone.trainable_variables[i].path


@pytest.mark.parametrize("name,blocks", [("resnet32", 15), ("preact_resnet18", 8),
                                         ("resnet34", 16), ("wrn28_2", 12), ("wrn28_10", 12)])
def test_residual_backbones_list_their_blocks_input_to_output(name, blocks):
    """The block variables partition everything below the last block (the stem goes with the
    first block), in the order of the model's trainable variables; the head (and WRN's
    final BN) are in no block, so top:N always steps them."""
    net = backbones.build(name, num_classes=10, input_shape=(8, 8, 3), mean=(0.5,) * 3,
                          std=(0.25,) * 3)
    groups = meta_scope.block_variables(net)
    assert len(groups) == len(net.block_names) == blocks
    position = {id(v): i for i, v in enumerate(net.trainable_variables)}
    order = [position[id(v)] for group in groups for v in group]
    assert order == list(range(len(order)))  # disjoint, complete below the top, in order
    assert all(len(group) >= 6 for group in groups)  # two convs and two BNs at least
    top = [v.path for v in net.trainable_variables[len(order):]]
    assert top == (["final_bn/gamma", "final_bn/beta"] if name.startswith("wrn") else []) + [
        "logits/kernel", "logits/bias"]
    assert "stem_conv/kernel" in [v.path for v in groups[0]]


def test_scopes_are_parsed_in_one_place_and_top_n_needs_named_blocks():
    assert meta_scope.parse("top:2") == meta_scope.MetaScope("top", 2)
    assert str(meta_scope.parse("top:2")) == "top:2" and str(meta_scope.parse("full")) == "full"
    for bad in ("top:0", "top:", "top:x", "top:-1", "bottom:1", "top2", ""):
        with pytest.raises(ValueError, match="meta scope must be full, last_layer or top:N"):
            meta_scope.parse(bad)
    flat = backbones.build("mlp", num_classes=3, input_shape=(6,), mean=(0.3,), std=(0.4,))
    with pytest.raises(ValueError, match="needs a backbone with named blocks"):
        virtual.check_scope(flat, "top:1")
    with pytest.raises(ValueError, match="has only 3 blocks"):
        virtual.check_scope(_tiny_residual_classifier(), "top:4")
    with pytest.raises(ValueError, match="needs a backbone with named blocks"):
        meta_model.MetaReweightModel(flat, helpers.weight_net(), meta_scope="top:1",
                                     meta_objective=objectives.meta_objective("clid", tau=0.5))
