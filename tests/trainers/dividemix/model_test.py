"""DivideMixModel on tiny float64 networks: targets from the
two networks, the rectifier's inputs, the hypergradient of CLID through the MixMatch-term
virtual step against central differences (heavy ball, Nesterov, Adam fresh and warm), the
D-scaled routes against the full second-order tape, no side effect of a meta step, the
clip of the actual step only, and the two-network prediction."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.trainers.dividemix import mixmatch as dividemix
from clid_tf.trainers.dividemix import streams as dividemix_data
from clid_tf.trainers.dividemix import model as dividemix_model
from clid_tf.core import lookahead
from clid_tf.core import virtual
from clid_tf.metanets import vri
from clid_tf.metanets import wnet
from tests.helpers import small_models as helpers
from tests.helpers.gradients import frozen_clid

K, B, BU, META = 3, 4, 5, 6
WD = 0.05
OPTIMIZERS = {
    "heavy_ball": lambda: keras.optimizers.SGD(0.2, momentum=0.75),
    "nesterov": lambda: keras.optimizers.SGD(0.2, momentum=0.75, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.01),
}


def _model(kind="heavy_ball", warm_steps=2, meta_grad="recompute", clip_norm=0.8,
           weight_decay=WD, meta_nets=True, **kwargs):
    """Two tiny Dense-BN-ReLU-Dense nets (3 -> 4 -> K) and two tiny VRINets (or WeightNets
    with meta_nets="wnet"), float64, the classifier optimizers warmed by `warm_steps` real
    updates (non-zero slots)."""
    nets = [helpers.tiny_classifier(num_classes=K, seed=s) for s in (0, 1)]
    if meta_nets == "wnet":
        metas = [wnet.WeightNet(hidden=8, seed=s) for s in (0, 1)]
    else:
        metas = ([vri.VRINet(K, 4, embed_dim=4, hidden=(8,), seed=s) for s in (0, 1)]
                 if meta_nets else None)
    model = dividemix_model.DivideMixModel(
        nets, metas, warmup_epochs=1, lambda_u=3.0, rampup_epochs=4, meta_grad=meta_grad,
        clip_norm=clip_norm, weight_decay=weight_decay, seed=3, **kwargs)
    model.compile([OPTIMIZERS[kind]() for _ in nets],
                  [keras.optimizers.Adam(0.01) for _ in nets] if meta_nets else None)
    rng = np.random.default_rng(100)
    for optimizer, net in zip(model.net_optimizers, nets):
        for _ in range(warm_steps):
            optimizer.apply([tf.constant(rng.normal(size=v.shape) * 0.1)
                             for v in net.trainable_variables], net.trainable_variables)
    model.select_phase(dividemix_data.Phase("dividemix", 0, 4), epoch=2)
    return model


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    x = {"image": rng.normal(size=(B, 3)), "image2": rng.normal(size=(B, 3)),
         "label": rng.integers(0, K, B).astype(np.int32), "prob": rng.random(B)}
    u = {"image": rng.normal(size=(BU, 3)), "image2": rng.normal(size=(BU, 3))}
    return x, u, {"image": rng.normal(size=(META, 3))}


def _mixed(model, k=0, seed=0):
    x, u, meta = _batches(seed)
    mixed = model._mixed_batch(k, x, u, model._targets(k, x, u))
    return mixed, meta, model._lambda_u(k)


def _hypergradient(model, mixed, meta, lam, *, meta_grad=None, objective=None, k=0):
    step = lookahead.build(model.virtual_step, model.net_optimizers[k],
                           weight_decay=model.weight_decay)
    return virtual.hypergradient(
        model.backbones[k], model._training_loss(k, mixed, lam), mixed.images, meta,
        step=step, meta_objective=objective or model.meta_objective,
        meta_grad=meta_grad or model.meta_grad,
        fwd=virtual.train_forward(model.backbones[k], mixed.images))


# ---------------------------------------------------------------- 3, 4: targets, mixup
def test_co_guess_reads_the_other_network_and_co_refine_does_not():
    with helpers.floatx("float64"):
        model = _model()
        x, u, _ = _batches()
        t_x, t_u = model._targets(0, x, u)
        other = model.backbones[1]
        for v in other.trainable_variables:  # P now predicts the same for every input
            v.assign(tf.zeros_like(v))
        t_x2, t_u2 = model._targets(0, x, u)
        np.testing.assert_allclose(t_x2, t_x, rtol=1e-12)
        assert np.abs(t_u2.numpy() - t_u.numpy()).max() > 1e-3
        with tf.GradientTape() as tape:
            t_x, t_u = model._targets(0, x, u)
        variables = [v for net in model.backbones for v in net.trainable_variables]
        assert all(g is None for g in tape.gradient([t_x, t_u], variables))


def test_guess_forwards_update_own_bn_statistics_only_in_train_mode():
    with helpers.floatx("float64"):
        for mode, moves in (("train", True), ("inference", False)):
            model = _model(guess_bn_mode=mode)
            before = [helpers.snapshot(n.non_trainable_variables) for n in model.backbones]
            x, u, _ = _batches()
            model._targets(0, x, u)
            after = [helpers.snapshot(n.non_trainable_variables) for n in model.backbones]
            changed = [any(not np.array_equal(a, b) for a, b in zip(x1, x2))
                       for x1, x2 in zip(before, after)]
            assert changed == [moves, False], mode  # P's statistics are never written


def test_the_mixed_batch_puts_the_labeled_views_first():
    with helpers.floatx("float64"):
        model = _model()
        mixed, _, _ = _mixed(model)
        assert mixed.images.shape == (2 * B + 2 * BU, 3) and mixed.num_labeled == 2 * B
        np.testing.assert_array_equal(mixed.rows, np.arange(2 * B + 2 * BU))
        np.testing.assert_allclose(mixed.targets.numpy().sum(axis=1), 1.0, rtol=1e-12)


# ---------------------------------------------------------------- 5, 6: loss and rectifier
def test_the_rectifier_sees_the_argmax_of_the_mixed_target_and_not_the_penalty():
    with helpers.floatx("float64"):
        model = _model()
        meta_net = model.meta_nets[0]
        mixed, _, lam = _mixed(model)
        logits, features = model.backbones[0](mixed.images, training=True)
        with tf.GradientTape(persistent=True) as tape:
            terms, omega, _ = model.loss_terms(0, logits, features, mixed, lam)
        assert omega.shape == (2 * B + 2 * BU, K)
        assert (omega.numpy() > 0).all() and (omega.numpy() < 1).all()
        phi = meta_net.trainable_variables
        assert all(g is None for g in tape.gradient(terms.penalty, phi))  # raw logits only
        assert any(g is not None for g in tape.gradient(terms.l_x, phi))
        again = model.loss_terms(0, logits, features, mixed, lam)[1]
        assert np.abs(again.numpy() - omega.numpy()).max() > 1e-6  # eps redrawn per call
        # With the variance head at exp(-60), omega = sigmoid(mu(feature, argmax Y~)).
        head = meta_net.log_var_head
        head.kernel.assign(tf.zeros_like(head.kernel))
        head.bias.assign(tf.fill(head.bias.shape, tf.constant(-60.0, tf.float64)))
        omega = model.loss_terms(0, logits, features, mixed, lam)[1]
        mu, _ = meta_net(features, tf.argmax(mixed.targets, axis=-1))
        np.testing.assert_allclose(omega, tf.sigmoid(mu), rtol=1e-12)
        terms = model.loss_terms(0, logits, features, mixed, lam)[0]
        want = dividemix.mixmatch_loss(tf.sigmoid(mu) * logits, logits, mixed.targets,
                                       num_labeled=2 * B, lambda_u=lam)
        np.testing.assert_allclose(float(terms.total), float(want.total), rtol=1e-12)


def test_wnet_weights_each_row_term_of_the_mixmatch_loss_by_its_value():
    """With WNet, L = sum_i w~_i r_i + pen: r the rows of L_x + lambda L_u of the raw
    logits (`mixmatch.row_losses`), w = WNet(r) normalised over the batch; the penalty and
    the logged terms are those of the raw logits."""
    with helpers.floatx("float64"):
        model = _model(meta_nets="wnet")
        mixed, _, lam = _mixed(model)
        logits, features = model.backbones[0](mixed.images, training=True)
        terms, weights, _ = model.loss_terms(0, logits, features, mixed, lam)
        rows = dividemix.row_losses(logits, mixed.targets, num_labeled=2 * B, lambda_u=lam)
        w = model.meta_nets[0](rows).numpy()
        np.testing.assert_allclose(weights, w, rtol=1e-12)
        raw = dividemix.mixmatch_loss(logits, logits, mixed.targets, num_labeled=2 * B,
                                      lambda_u=lam)
        np.testing.assert_allclose(float(terms.total),
                                   float((w / w.sum() * rows.numpy()).sum() + raw.penalty),
                                   rtol=1e-12)
        np.testing.assert_allclose([float(terms.l_x), float(terms.l_u)],
                                   [float(raw.l_x), float(raw.l_u)], rtol=1e-12)


def test_lambda_u_follows_the_phase_clock():
    with helpers.floatx("float64"):
        model = _model(warm_steps=0)
        model.select_phase(dividemix_data.Phase("dividemix", 1, 4), epoch=3)
        assert float(model._lambda_u(1)) == pytest.approx(3.0 * (3 - 1) / 4)
        model.net_optimizers[1].iterations.assign(2)  # half-way through the phase
        assert float(model._lambda_u(1)) == pytest.approx(3.0 * (3.5 - 1) / 4)


# ---------------------------------------------------------------- 7: the hypergradient
@pytest.mark.parametrize("kind,warm_steps,meta_nets", [
    ("heavy_ball", 2, True), ("nesterov", 2, True), ("adam", 0, True), ("adam", 3, True),
    ("heavy_ball", 2, "wnet"), ("adam", 3, "wnet")])
def test_clid_hypergradient_through_the_mixmatch_virtual_step_matches_central_differences(
        kind, warm_steps, meta_nets):
    """dCLID(theta'(phi))/dphi with theta' the real optimizer's next update from a warm
    state (coupled L2), the rectified L_x + lambda L_u + pen, float64, h = 1e-5; eps is
    the same in every evaluation (the VRI noise state is reset). CLID's gradient is that
    of its value with S and the row sums frozen (`virtual_test._frozen_clid`), so the
    differences are taken of that surrogate at the base point."""
    with helpers.floatx("float64"):
        model = _model(kind, warm_steps, meta_nets=meta_nets)
        mixed, meta, lam = _mixed(model)
        meta_net = model.meta_nets[0]
        noise = getattr(meta_net, "noise", None)  # VRI's eps generator (WNet has none)
        start = None if noise is None else noise.state.numpy()

        def result(objective=None):
            if noise is not None:
                noise.state.assign(start)
            return _hypergradient(model, mixed, meta, lam, objective=objective)

        grads = [tf.convert_to_tensor(g) for g in result().meta_grads]  # embedding: sparse
        base = {}
        result(lambda f, z, y: base.update(f=f, z=z) or tf.reduce_sum(z))
        surrogate = frozen_clid(base["f"], base["z"])
        rng = np.random.default_rng(7)
        phi = meta_net.trainable_variables
        checked = 0
        for i in rng.permutation(len(phi))[:5]:  # VRI: 5 of its 7, embedding included
            index = tuple(int(rng.integers(d)) for d in phi[i].shape)
            original = phi[i].numpy()
            values = []
            for h in (1e-5, -1e-5):
                shifted = original.copy()
                shifted[index] += h
                phi[i].assign(shifted)
                values.append(float(result(surrogate).meta_loss))
            phi[i].assign(original)
            numeric = (values[0] - values[1]) / 2e-5
            analytic = float(grads[i].numpy()[index])
            assert abs(analytic - numeric) <= 1e-4 * max(abs(numeric), 1e-3), (
                i, index, analytic, numeric)
            checked += abs(numeric) > 1e-8
        assert checked >= min(3, len(phi))  # most probes see a non-zero gradient


@pytest.mark.parametrize("meta_grad", ["recompute", "jvp"])
def test_d_scaled_routes_equal_the_full_second_order_tape(meta_grad):
    with helpers.floatx("float64"):
        model = _model("nesterov")
        mixed, meta, lam = _mixed(model)
        noise = model.meta_nets[0].noise.state.numpy()
        results = []
        for route in ("tape", meta_grad):
            model.meta_nets[0].noise.state.assign(noise)
            results.append(_hypergradient(model, mixed, meta, lam, meta_grad=route))
        assert float(results[0].meta_loss) == pytest.approx(float(results[1].meta_loss),
                                                            rel=1e-12)
        for a, b in zip(*(r.meta_grads for r in results)):
            np.testing.assert_allclose(tf.convert_to_tensor(b), tf.convert_to_tensor(a),
                                       rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- 8: no side effects
def test_a_meta_step_moves_only_phi():
    with helpers.floatx("float64"):
        model = _model("heavy_ball")
        mixed, meta, lam = _mixed(model)
        net, optimizer = model.backbones[0], model.net_optimizers[0]
        fwd = virtual.train_forward(net, mixed.images)
        watched = [net.trainable_variables, net.non_trainable_variables, optimizer.variables,
                   model.backbones[1].variables, model.meta_nets[1].trainable_variables]
        before = [helpers.snapshot(vs) for vs in watched]
        phi = helpers.snapshot(model.meta_nets[0].trainable_variables)
        model._meta_step(0, mixed, meta, fwd, lam)
        for vs, old in zip(watched, before):
            for v, o in zip(vs, old):
                np.testing.assert_array_equal(v.numpy(), o, err_msg=v.path)
        assert any(not np.array_equal(v.numpy(), o)
                   for v, o in zip(model.meta_nets[0].trainable_variables, phi))


# ---------------------------------------------------------------- 9: the clip
def test_only_the_actual_step_is_clipped():
    """SGD without momentum or decay: the actual update is -lr * g * min(1, c / |g|),
    the unclipped gradient's direction with norm <= c; the virtual step is unclipped.
    (c = 0.1 here, so that the tiny net's gradient exceeds it.)"""
    clip = 0.1
    with helpers.floatx("float64"):
        model = _model("heavy_ball", warm_steps=0, weight_decay=0.0, clip_norm=clip)
        model.net_optimizers[0] = keras.optimizers.SGD(1.0)
        net = model.backbones[0]
        model.net_optimizers[0].build(net.trainable_variables)
        mixed, _, lam = _mixed(model)
        noise = model.meta_nets[0].noise.state.numpy()
        theta = helpers.snapshot(net.trainable_variables)
        with tf.GradientTape() as tape:
            logits, features = net(mixed.images, training=True)
            loss = model.loss_terms(0, logits, features, mixed, lam)[0].total
        grads = [g.numpy() for g in tape.gradient(loss, net.trainable_variables)]
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        assert norm > clip  # so the clip acts
        fwd = virtual.train_forward(net, mixed.images)
        virtual_step = lookahead.build("sgd", model.net_optimizers[0])(
            net.trainable_variables, fwd.theta, grads)
        for p, t, g in zip(virtual_step.params, theta, grads):
            np.testing.assert_allclose(p, t - g, rtol=1e-12)  # lr 1, no clip
        model.meta_nets[0].noise.state.assign(noise)
        model._actual_step(0, mixed, fwd, lam)
        steps = [t - v.numpy() for t, v in zip(theta, net.trainable_variables)]
        assert np.sqrt(sum((s ** 2).sum() for s in steps)) <= clip + 1e-6
        for s, g in zip(steps, grads):
            np.testing.assert_allclose(s, g * clip / (norm + 1e-6), rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------- 10 and the phases
def test_the_model_predicts_with_the_mean_logits():
    """The two networks' mean logits (the backbones here return logits, so no output
    activation): the argmax of the summed logits, DivideMix's prediction."""
    with helpers.floatx("float64"):
        model = _model()
        images = np.random.default_rng(3).normal(size=(7, 3))
        want = sum(n(images, training=False)[0].numpy() for n in model.backbones) / 2
        np.testing.assert_allclose(model(images), want, rtol=1e-12)
        labels = want.argmax(axis=1)
        labels[0] = (labels[0] + 1) % K
        logs = model.test_step((images, labels))
        assert float(logs["accuracy"]) == pytest.approx(6 / 7)


@pytest.mark.parametrize("meta_nets", [True, False])
def test_a_phase_trains_only_its_network_with_one_trace(meta_nets):
    with helpers.floatx("float64"):
        model = _model(meta_nets=meta_nets)
        x, u, meta = _batches()
        element = {"labeled": x, "unlabeled": u, **({"meta": meta} if meta_nets else {})}
        dataset = tf.data.Dataset.from_tensors(element).repeat(3)
        streams = _FixedStreams(dataset)
        before = [helpers.snapshot(n.trainable_variables) for n in model.backbones]
        metas_before = (None if not meta_nets else
                        [helpers.snapshot(m.trainable_variables) for m in model.meta_nets])
        model.warmup_epochs = 0
        model.fit(streams, epochs=1)
        assert model.trace_counts == {("dividemix", 0): 1}
        assert model.net_optimizers[0].iterations.numpy() == 5  # 2 warm + 3
        assert model.net_optimizers[1].iterations.numpy() == 2
        moved = [any(not np.array_equal(v.numpy(), o) for v, o in zip(n.trainable_variables, b))
                 for n, b in zip(model.backbones, before)]
        assert moved == [True, False]
        if meta_nets:
            assert model.meta_optimizers[0].iterations.numpy() == 3
            assert all(np.array_equal(v.numpy(), o) for v, o in zip(
                model.meta_nets[1].trainable_variables, metas_before[1]))
        logs = model.epoch_logs()  # net 2 did not train: its terms are there, as NaN
        assert np.isfinite(logs["net1_l_x"]) and np.isnan(logs["net2_l_x"])
        assert np.isfinite(logs["loss"])


class _FixedStreams:
    """A `Streams` stand-in: every epoch is 3 DivideMix steps of net 1 on one element."""

    def __init__(self, dataset):
        self.dataset = dataset

    def clean_probabilities(self, backbones, epoch):
        return [np.ones(4), np.ones(4)]

    def dividemix_epoch(self, epoch, parts):
        return dividemix_data.EpochPlan([dividemix_data.Phase("dividemix", 0, 3)],
                                        self.dataset, {})


class _CrossEntropyOnly(keras.Model):
    """A meta-net of the required contract only: it weights CE on `labels`, so it cannot
    weight the rows of a MixMatch loss."""

    def weighted_loss(self, logits, features, labels, *, regularize=True):
        raise AssertionError("never called")

    def label_weights(self, logits, features, labels):
        raise AssertionError("never called")


def test_what_divide_mix_cannot_train_is_refused_at_construction():
    """One network passed twice would train as one; a meta-net whose weighted_loss cannot
    take the rows of the MixMatch loss has nothing to weight: both refused in one line
    before any training, by what they lack (they used to train the warm-up first)."""
    net = helpers.tiny_classifier(num_classes=K, seed=0)
    with pytest.raises(ValueError, match="two separate networks, but the two given share"):
        dividemix_model.DivideMixModel([net, net])
    other = helpers.tiny_classifier(num_classes=K, seed=1)
    with pytest.raises(ValueError, match="_CrossEntropyOnly.weighted_loss has no "
                                         "per_sample_loss or rows argument"):
        dividemix_model.DivideMixModel([net, other], [_CrossEntropyOnly(), _CrossEntropyOnly()])
    dividemix_model.DivideMixModel([net, other], [wnet.WeightNet(), wnet.WeightNet()])
    rectifier = vri.VRINet(K, 4, embed_dim=4, hidden=(8,), seed=0)
    with pytest.raises(ValueError, match="two separate meta-nets"):
        dividemix_model.DivideMixModel([net, other], [rectifier, rectifier])
