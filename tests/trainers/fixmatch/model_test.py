"""FixMatch / FlexMatch with a CLID-trained loss-net: data, losses, meta step, EMA, on
the library (float64 tiny models; the CLI runs are in fixmatch_cli_test.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from clid_tf.data import datasets
from clid_tf.trainers.fixmatch import model as fixmatch
from clid_tf.core import lookahead
from clid_tf.metanets import vri
from clid_tf.metanets import wnet
from clid_tf.data import noise as noise_lib
from clid_tf.core import objectives
from clid_tf.evaluation import selection as selection_lib
from clid_tf.data.inputs import ArrayInputs
from clid_tf.data import ssl_splits
from clid_tf.trainers.fixmatch import streams as ssl_streams
from tests.helpers import small_models as helpers

K = 10
LR, MU, WD = 0.25, 0.75, 0.05  # exact in float32, through which Keras casts mu


def _dataset(per_class=300, k=K, seed=0):
    """A clean benchmark-like Dataset of tiny images: per_class images of each class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    images = rng.integers(0, 256, (len(labels), 2, 2, 1)).astype(np.uint8)
    train = datasets.Split(ArrayInputs(images), labels, labels.copy())
    return datasets.Dataset(train=train, val=None, test=None, num_classes=k,
                            class_names=tuple(map(str, range(k))), mean=(0.5,), std=(0.2,),
                            labels_given=False)


def _prepare(ds, **kwargs):
    args = dict(num_labels=1000, noise="sym_exact", noise_rate=0.5, seed=0, meta_size=200,
                batch_size=10, unlabeled_batch_size=30, meta_batch_size=20)
    return ssl_splits.prepare(ds, **{**args, **kwargs})


# ------------------------------------------------------------- data: split, noise, meta set
def test_noise_only_on_the_labeled_part_with_the_ssl_symmetric_convention():
    ds = _dataset()
    before = ds.train.labels.copy()
    setup = _prepare(ds, num_labels=2000)
    labeled, unlabeled = setup.train_indices, setup.unlabeled_indices
    true, noisy = ds.train.clean_labels[labeled], setup.noisy_labels[labeled]
    flipped = noisy != true
    sigma = np.sqrt(0.5 * 0.5 / len(labeled))
    assert abs(flipped.mean() - 0.5) < 3 * sigma  # sym_exact: flip rate eta, not eta (K-1)/K
    off = noise_lib.transition_matrix(true[flipped], noisy[flipped], num_classes=K)
    counts = np.array([np.sum((true[flipped] == a) & (noisy[flipped] == b))
                       for a in range(K) for b in range(K) if a != b])
    assert np.all(np.diag(off) == 0) and stats.chisquare(counts).pvalue > 1e-3
    assert np.all(setup.noisy_labels[unlabeled] == ssl_splits.NO_LABEL)  # no label at all
    np.testing.assert_array_equal(ds.train.labels, before)  # given and true labels intact
    np.testing.assert_array_equal(ds.train.clean_labels, before)


def test_asymmetric_cifar10_noise_follows_the_reference_map_on_the_labeled_part():
    setup = _prepare(_dataset(), noise="asym_cifar10", noise_rate=1.0)
    true = setup.dataset.train.clean_labels[setup.train_indices]
    mapped = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}  # truck->car, bird->plane, cat<->dog, deer->horse
    want = np.array([mapped.get(int(y), int(y)) for y in true])
    np.testing.assert_array_equal(setup.noisy_labels[setup.train_indices], want)


def test_split_is_class_balanced_disjoint_and_seeded():
    ds = _dataset()
    setup = _prepare(ds)
    labeled, unlabeled = setup.train_indices, setup.unlabeled_indices
    assert np.array_equal(np.bincount(ds.train.clean_labels[labeled], minlength=K),
                          np.full(K, 100))
    assert not set(labeled) & set(unlabeled)
    assert len(labeled) + len(unlabeled) == len(ds.train.labels)
    again, other = _prepare(ds), _prepare(ds, seed=1)
    assert np.array_equal(again.train_indices, labeled)
    assert np.array_equal(again.noisy_labels, setup.noisy_labels)
    assert not np.array_equal(other.train_indices, labeled)
    inclusive = _prepare(ds, include_labeled_in_unlabeled=True)
    assert set(inclusive.train_indices) <= set(inclusive.unlabeled_indices)
    assert len(inclusive.unlabeled_indices) == len(ds.train.labels)


def test_held_out_part_comes_from_the_labeled_samples():
    setup = _prepare(_dataset(), val_split=0.2)
    assert len(setup.val_indices) == 200 and len(setup.train_indices) == 800
    assert not set(setup.val_indices) & set(setup.train_indices)
    assert not set(setup.val_indices) & set(setup.unlabeled_indices)
    assert np.all(setup.noisy_labels[setup.val_indices] >= 0)


def test_meta_sets_of_both_sources():
    ds = _dataset()
    unlabeled = _prepare(ds)
    assert len(unlabeled.meta_indices) == 200
    assert set(unlabeled.meta_indices) <= set(unlabeled.unlabeled_indices)
    assert unlabeled.meta_labels is None
    labeled = _prepare(ds, meta_source="labeled")
    assert set(labeled.meta_indices) <= set(labeled.train_indices)  # stays in training
    np.testing.assert_array_equal(np.bincount(labeled.noisy_labels[labeled.meta_indices],
                                              minlength=K), np.full(K, 20))
    # checked against the labeled set (the authors' fork checks the unlabeled one:
    # ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/utils/build.py: get_meta_set())
    with pytest.raises(ValueError, match="noisy class"):
        _prepare(ds, meta_source="labeled", num_labels=100, meta_size=500)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(num_labels=15), "multiple of the 10 classes"),
    (dict(num_labels=3000), "left unlabeled"),
    (dict(batch_size=2000), "batch_size=2000 exceeds the 1000 labeled"),
    (dict(unlabeled_batch_size=5000), "uratio * batch_size = 5000"),
    (dict(meta_batch_size=500), "meta_batch_size=500 exceeds the meta set"),
])
def test_sizes_that_cannot_work_are_one_line(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("*", r"\*")):
        _prepare(_dataset(), **kwargs)


def _views_stream(meta_views=("weak", "strong")):
    ds = _dataset(per_class=20)
    setup = _prepare(ds, num_labels=100, meta_size=50)
    weak = lambda x, stateless_seed: x  # noqa: E731
    strong = lambda x, stateless_seed: 255.0 - x  # noqa: E731
    stream = ssl_streams.ssl_stream(
        ds.train.inputs, labeled=setup.train_indices, labels=setup.noisy_labels,
        unlabeled=setup.unlabeled_indices, meta=setup.meta_indices, weak=weak,
        strong=strong, batch_size=10, unlabeled_batch_size=30, meta_batch_size=20,
        meta_views=meta_views, seed=0, steps_per_epoch=3, with_positions=True)
    return setup, stream


def test_streams_carry_the_views_of_the_same_images_and_the_meta_set_no_label():
    setup, stream = _views_stream()
    spec = stream.element_spec
    assert set(spec["meta"]) == {"weak", "strong"}  # no label field of any kind
    assert set(spec["unlabeled"]) == {"weak", "strong", "position"}
    assert set(spec["labeled"]) == {"image", "label"}
    element = next(iter(stream))
    with pytest.raises(KeyError):
        element["meta"]["label"]  # pylint: disable=pointless-statement
    for part in ("meta", "unlabeled"):
        np.testing.assert_array_equal(element[part]["strong"], 255.0 - element[part]["weak"])
    rows = fixmatch.meta_images(element["meta"])
    assert rows.shape[0] == 40  # 2n CLID rows: weak, then strong, of the same n images
    np.testing.assert_array_equal(rows[:20], element["meta"]["weak"])
    np.testing.assert_array_equal(rows[20:], element["meta"]["strong"])
    positions = element["unlabeled"]["position"].numpy()
    assert positions.min() >= 0 and positions.max() < len(setup.unlabeled_indices)
    _, weak_only = _views_stream(("weak",))
    assert set(weak_only.element_spec["meta"]) == {"weak"}
    assert fixmatch.meta_images(next(iter(weak_only))["meta"]).shape[0] == 20


# ------------------------------------------------------------- losses
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_unsupervised_term_masks_by_confidence_and_divides_by_all_rows():
    rng = np.random.default_rng(0)
    weak = rng.normal(scale=3.0, size=(12, 4))
    strong = rng.normal(size=(12, 4))
    zw, zs = tf.constant(weak), tf.constant(strong)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([zw, zs])
        term = fixmatch.unsupervised_loss(zw, zs, thresholds=0.8)
    p = _softmax(weak)
    mask, pseudo = p.max(axis=1) >= 0.8, p.argmax(axis=1)
    assert 0 < mask.sum() < 12
    ce = -np.log(_softmax(strong)[np.arange(12), pseudo])
    np.testing.assert_allclose(float(term.loss), np.sum(ce * mask) / 12, rtol=1e-12)
    assert not np.isclose(float(term.loss), np.sum(ce * mask) / mask.sum())
    np.testing.assert_array_equal(term.mask.numpy(), mask)
    np.testing.assert_array_equal(term.pseudo.numpy(), pseudo)
    assert tape.gradient(term.loss, zw) is None  # stop-gradient on the weak view
    assert tape.gradient(term.loss, zs) is not None
    per_class = np.array([0.99, 0.5, 0.9, 0.0])  # FlexMatch: threshold of the pseudo-label
    flex = fixmatch.unsupervised_loss(zw, zs, thresholds=per_class)
    np.testing.assert_array_equal(flex.mask.numpy(), p.max(axis=1) >= per_class[pseudo])


def test_unnormalised_loss_net_loss_is_the_mean_of_weight_times_ce():
    with helpers.floatx("float64"):
        net = wnet.WeightNet(hidden=8, seed=1, normalize=False)
        net(np.zeros([1]))
        normalised = wnet.WeightNet(hidden=8, seed=1)
        normalised(np.zeros([1]))
    logits = np.random.default_rng(1).normal(size=(7, 4))
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    out = net.weighted_loss(tf.constant(logits), None, tf.constant(labels))
    ce = -np.log(_softmax(logits)[np.arange(7), labels])
    w = out.weights.numpy()
    assert np.all((0 < w) & (w < 1))
    np.testing.assert_allclose(float(out.loss), np.mean(w * ce), rtol=1e-12)
    norm = normalised.weighted_loss(tf.constant(logits), None, tf.constant(labels))
    np.testing.assert_allclose(float(norm.loss), np.sum(w * ce) / w.sum(), rtol=1e-12)
    assert not np.isclose(float(out.loss), float(norm.loss))
    assert wnet.WeightNet.from_config(net.get_config()).normalize is False


def _model(loss_net=True, *, algorithm="fixmatch", lambda_u=0.7, p_cutoff=0.4, **kwargs):
    """A compiled float64 FixMatchModel on the tiny classifier (call under floatx)."""
    backbone = helpers.tiny_classifier(num_classes=3, seed=0)
    net = None
    if loss_net:
        net = wnet.WeightNet(hidden=8, seed=0, normalize=False)
        net(np.zeros([1]))
    model = fixmatch.FixMatchModel(
        backbone, net, algorithm=algorithm, num_unlabeled=40, lambda_u=lambda_u,
        p_cutoff=p_cutoff, ema_decay=0.9, tau=0.5, weight_decay=WD,
        no_decay=lookahead.bn_and_bias(backbone), **kwargs)
    model.compile(keras.optimizers.SGD(LR, momentum=MU, nesterov=True),
                  keras.optimizers.SGD(0.5) if loss_net else None)
    return model


def _data(seed=0, unlabeled_seed=None):
    rng = np.random.default_rng(seed)
    labeled = {"image": rng.normal(size=(6, 3)), "label": rng.integers(0, 3, 6).astype(np.int32),
               "is_noisy": rng.random(6) < 0.5}
    urng = np.random.default_rng(seed + 100 if unlabeled_seed is None else unlabeled_seed)
    weak = urng.normal(size=(8, 3)) * 2
    unlabeled = {"weak": weak, "strong": weak + urng.normal(size=(8, 3)) * 0.3,
                 "position": urng.permutation(40)[:8].astype(np.int32)}
    meta = {"weak": rng.normal(size=(5, 3)), "strong": rng.normal(size=(5, 3))}
    return {"labeled": labeled, "unlabeled": unlabeled, "meta": meta}


def _set_constant_weight(net, value=60.0):
    """The loss-net's output sigmoid(value) == 1.0 in float64 for every input."""
    for v in net.trainable_variables:
        v.assign(tf.zeros_like(v))
    net.out.bias.assign([value])


def test_loss_net_of_weight_one_gives_plain_fixmatch():
    with helpers.floatx("float64"):
        plain, weighted = _model(loss_net=False), _model(loss_net=True)
        _set_constant_weight(weighted.meta_net)
        data = _data()
        theta = helpers.snapshot(plain.backbone.trainable_variables)
        frozen = helpers.snapshot(plain.backbone.non_trainable_variables)
        logs = plain.train_step(data)
        weighted.train_step(data)
    for a, b in zip(plain.backbone.weights, weighted.backbone.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)
    # The step's loss is FixMatch's, from one training-mode forward of cat(lb, w, s).
    images = np.concatenate([data["labeled"]["image"], data["unlabeled"]["weak"],
                             data["unlabeled"]["strong"]])
    (logits, _), _ = plain.backbone.stateless_call(theta, frozen, images, training=True)
    logits = logits.numpy()
    lb, w, s = logits[:6], logits[6:14], logits[14:]
    labels = data["labeled"]["label"]
    sup = np.mean(-np.log(_softmax(lb)[np.arange(6), labels]))
    p = _softmax(w)
    mask, pseudo = p.max(axis=1) >= 0.4, p.argmax(axis=1)
    unsup = np.sum(-np.log(_softmax(s)[np.arange(8), pseudo]) * mask) / 8
    assert 0 < mask.sum() < 8
    np.testing.assert_allclose(float(logs["loss_sup"]), sup, rtol=1e-10)
    np.testing.assert_allclose(float(logs["loss"]), sup + 0.7 * unsup, rtol=1e-10)
    np.testing.assert_allclose(float(logs["mask_ratio"]), mask.mean(), rtol=1e-12)


def test_supervised_weights_come_from_the_updated_loss_net_without_gradient():
    with helpers.floatx("float64"):
        model = _model()
        data = _data()
        theta = helpers.snapshot(model.backbone.trainable_variables)
        frozen = helpers.snapshot(model.backbone.non_trainable_variables)
        phi_before = helpers.snapshot(model.meta_net.trainable_variables)
        logs = model.train_step(data)
        with tf.GradientTape() as tape:
            logits, features = model.backbone(data["labeled"]["image"], training=False)
            weights, _ = model._supervised(  # pylint: disable=protected-access
                logits, features, data["labeled"])
        assert tape.gradient(weights, model.meta_net.trainable_variables)[0] is None
    assert any(not np.allclose(a, b.numpy()) for a, b in
               zip(phi_before, model.meta_net.trainable_variables))
    images = np.concatenate([data["labeled"]["image"], data["unlabeled"]["weak"],
                             data["unlabeled"]["strong"]])
    (logits, _), _ = model.backbone.stateless_call(theta, frozen, images, training=True)
    ce = objectives.per_sample_ce(logits[:6], data["labeled"]["label"])
    after = model.meta_net(ce).numpy()  # phi after the meta step (the actual step keeps it)
    np.testing.assert_allclose(float(logs["loss_sup"]), np.mean(after * ce.numpy()),
                               rtol=1e-10)
    before = model.meta_net.__class__(hidden=8, normalize=False)
    before(np.zeros([1]))
    for v, value in zip(before.trainable_variables, phi_before):
        v.assign(value)
    assert not np.isclose(float(logs["loss_sup"]), np.mean(before(ce).numpy() * ce.numpy()))


def test_a_vri_loss_net_rectifies_the_supervised_term_through_the_contract():
    """Any meta-net serves as the loss-net: a VRINet's supervised term is the mean CE of
    its rectified labeled logits (the same eps as its own weighted_loss), and its phi is
    trained by the meta step."""
    with helpers.floatx("float64"):
        backbone = helpers.tiny_classifier(num_classes=3, seed=0)
        rectifier = vri.VRINet(3, 4, embed_dim=4, hidden=(8,), seed=0)
        model = fixmatch.FixMatchModel(backbone, rectifier, num_unlabeled=40, lambda_u=0.7,
                                       p_cutoff=0.4, tau=0.5, weight_decay=WD)
        model.compile(keras.optimizers.SGD(LR, momentum=MU, nesterov=True),
                      keras.optimizers.Adam(0.01))
        data = _data()
        theta = helpers.snapshot(backbone.trainable_variables)
        frozen = helpers.snapshot(backbone.non_trainable_variables)
        phi_before = helpers.snapshot(rectifier.trainable_variables)
        model.meta_active = False  # the actual step alone first: phi as it is
        noise = rectifier.noise.state.numpy()
        logs = model.train_step(data)
        images = np.concatenate([data["labeled"]["image"], data["unlabeled"]["weak"],
                                 data["unlabeled"]["strong"]])
        (logits, features), _ = backbone.stateless_call(theta, frozen, images, training=True)
        labels = data["labeled"]["label"]
        np.testing.assert_allclose(float(logs["loss_sup"]), float(tf.reduce_mean(
            objectives.per_sample_ce(logits[:6], labels))), rtol=1e-10)  # off: plain CE
        model.meta_active = True
        rectifier.noise.state.assign(noise)
        _, supervised = model._supervised(  # pylint: disable=protected-access
            logits[:6], features[:6], data["labeled"])
        rectifier.noise.state.assign(noise)
        want = rectifier.weighted_loss(logits[:6], features[:6], labels, regularize=False)
        np.testing.assert_allclose(float(supervised), float(want.loss), rtol=1e-12)
        model.train_step(data)
    assert any(not np.allclose(a, b.numpy()) for a, b in
               zip(phi_before, rectifier.trainable_variables))


# ------------------------------------------------------------- the meta step
def test_the_hypergradient_ignores_the_unlabeled_batch():
    with helpers.floatx("float64"):
        runs = []
        for unlabeled_seed in (1, 2):
            model = _model()
            model.train_step(_data(unlabeled_seed=unlabeled_seed))
            runs.append(model)
    first, second = runs
    for a, b in zip(first.meta_net.trainable_variables, second.meta_net.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # bit-identical phi
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in
               zip(first.backbone.trainable_variables, second.backbone.trainable_variables))


def _meta_loss_after_real_step(model, phi_values, data):
    """The meta objective (mean prediction entropy) at theta' = the real Keras
    SGD-Nesterov's next update (a fresh optimizer with the model's momentum slots), the
    loss-net at phi_values: the finite-difference reference, independent of
    clid_tf.core.lookahead."""
    net, backbone = model.meta_net, model.backbone
    saved = helpers.snapshot(net.trainable_variables)
    for v, value in zip(net.trainable_variables, phi_values):
        v.assign(value)
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        (logits, _), _ = backbone.stateless_call(theta, frozen, data["labeled"]["image"],
                                                 training=True)
        ce = objectives.per_sample_ce(logits, data["labeled"]["label"])
        loss = tf.reduce_mean(net(ce) * ce)
    grads = tape.gradient(loss, theta)
    decayed = lookahead.decay_mask(backbone.trainable_variables, model.no_decay)
    grads = [g + WD * t if d else g for g, t, d in zip(grads, theta, decayed)]
    copies = [keras.Variable(np.array(t)) for t in theta]  # not sharing the tf.Variable
    optimizer = keras.optimizers.SGD(LR, momentum=MU, nesterov=True)
    optimizer.build(copies)
    for mine, theirs in zip(optimizer.momentums, model.optimizer.momentums):
        mine.assign(theirs)
    optimizer.apply(grads, copies)
    rows = fixmatch.meta_images(data["meta"])
    (meta_logits, _), _ = backbone.stateless_call([c.value for c in copies], frozen, rows,
                                                  training=True)
    for v, value in zip(net.trainable_variables, saved):
        v.assign(value)
    return float(objectives.mean_entropy(meta_logits))


@pytest.mark.parametrize("meta_grad", ["recompute", "tape"])
def test_nesterov_virtual_step_hypergradient_matches_finite_differences(meta_grad):
    """CLID's gradient is, by design, not the derivative of its value (its feature side
    and row sums are stop-gradients), so finite differences check the route
    with a smooth label-free objective, the mean prediction entropy."""
    with helpers.floatx("float64"):
        model = _model(meta_grad=meta_grad, meta_objective="entropy")
        model.train_step(_data(seed=5))  # a warm momentum buffer
        assert all(np.abs(m.numpy()).max() > 0 for m in model.optimizer.momentums)
        assert model.no_decay  # biases and BN are exempt from the decay
        data = _data(seed=6)
        result = model.meta_gradients(data["labeled"], data["meta"])
        phi = helpers.snapshot(model.meta_net.trainable_variables)
        eps = 1e-6
        for index in (0, 2):  # hidden kernel and output kernel
            grad = result.meta_grads[index].numpy().ravel()
            for j in range(0, phi[index].size, 3):
                values = []
                for sign in (1, -1):
                    moved = [p.copy() for p in phi]
                    moved[index].ravel()[j] += sign * eps
                    values.append(_meta_loss_after_real_step(model, moved, data))
                want = (values[0] - values[1]) / (2 * eps)
                np.testing.assert_allclose(grad[j], want, rtol=1e-5, atol=1e-10)
        step = lookahead.build("optimizer", model.optimizer, weight_decay=WD)
        variables = model.backbone.trainable_variables
        slopes = step(variables, [v.value for v in variables],
                      [tf.zeros_like(v) for v in variables]).slopes
        np.testing.assert_allclose([float(s) for s in slopes], LR * (1 + MU), rtol=1e-6)


# ------------------------------------------------------------- FlexMatch
def test_flexmatch_thresholds_on_a_hand_made_table():
    table = tf.constant([-1, -1, -1, -1, -1, 0, 0, 0, 1, 2, 2])  # 5 unused, counts 3, 1, 2
    warm = fixmatch.flexmatch_thresholds(table, num_classes=3, p_cutoff=0.95)
    beta = np.array([3, 1, 2]) / 5  # the unused count (5) is the largest
    np.testing.assert_allclose(warm.numpy(), 0.95 * beta / (2 - beta), rtol=1e-6)
    cold = fixmatch.flexmatch_thresholds(table, num_classes=3, p_cutoff=0.95, warmup=False)
    beta = np.array([3, 1, 2]) / 3
    np.testing.assert_allclose(cold.numpy(), 0.95 * beta / (2 - beta), rtol=1e-6)
    for warmup in (True, False):  # nothing selected yet: b = 0, every threshold 0
        empty = fixmatch.flexmatch_thresholds(tf.fill([6], -1), num_classes=3,
                                              p_cutoff=0.95, warmup=warmup)
        np.testing.assert_array_equal(empty.numpy(), np.zeros(3))


def test_flexmatch_table_records_confident_samples_only():
    table = tf.constant([-1, -1, 2, -1, 0, -1])
    positions = tf.constant([0, 2, 3, 5, 3])
    pseudo = tf.constant([1, 0, 2, 1, 1])
    low = fixmatch.flexmatch_select(table, positions, tf.constant([0.9, 0.5, 0.94, 0.1, 0.2]),
                                    pseudo, p_cutoff=0.95)
    np.testing.assert_array_equal(low.numpy(), table.numpy())  # none >= 0.95: unchanged
    high = fixmatch.flexmatch_select(table, positions,
                                     tf.constant([0.96, 0.5, 0.99, 0.95, 0.97]), pseudo,
                                     p_cutoff=0.95)
    # position 3 occurs twice: its last occurrence (label 1) is kept
    np.testing.assert_array_equal(high.numpy(), [1, -1, 2, 1, 0, 1])


def test_flexmatch_step_updates_its_table_and_uses_it_next_step():
    with helpers.floatx("float64"):
        model = _model(algorithm="flexmatch", p_cutoff=0.4)
        data = _data()
        first = model.train_step(data)
        table = model.selected_label.numpy()
    assert float(first["threshold_max"]) == 0.0  # an empty table at the first step
    assert (table >= 0).any()
    chosen = np.setdiff1d(np.flatnonzero(table >= 0), data["unlabeled"]["position"])
    assert chosen.size == 0  # only this batch's samples were recorded
    with helpers.floatx("float64"):
        model.reset_metrics()  # logs are means over an epoch's steps
        second = model.train_step(_data(seed=1))
    want = fixmatch.flexmatch_thresholds(tf.constant(table), num_classes=3, p_cutoff=0.4)
    np.testing.assert_allclose(float(second["threshold_max"]), want.numpy().max(), rtol=1e-6)


# ------------------------------------------------------------- EMA, selection
def test_ema_averages_the_parameters_and_copies_the_buffers():
    with helpers.floatx("float64"):
        model = _model(loss_net=False)
        start = helpers.snapshot(model.backbone.weights)
        np.testing.assert_array_equal(start[0], model.ema_backbone.weights[0].numpy())
        model.train_step(_data())
    for before, live, average in zip(start, model.backbone.weights,
                                     model.ema_backbone.weights):
        if live.trainable:  # ema = d * theta_0 + (1 - d) * theta_1, d = 0.9
            np.testing.assert_allclose(average.numpy(), 0.9 * before + 0.1 * live.numpy(),
                                       rtol=1e-12)
        else:
            np.testing.assert_array_equal(average.numpy(), live.numpy())
    assert not model.ema_backbone.trainable_variables  # not trained, not in the optimizer


class _Recorder(keras.callbacks.Callback):
    """The EMA weights and the live weights at every evaluation (epoch end)."""

    def __init__(self):
        super().__init__()
        self.ema, self.live = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.ema[epoch + 1] = [w.numpy().copy() for w in self.model.ema_backbone.weights]
        self.live[epoch + 1] = [w.numpy().copy() for w in self.model.backbone.weights]


def test_evaluation_selection_and_reload_use_each_evaluations_own_ema_weights(tmp_path):
    with helpers.floatx("float64"):
        model = _model(loss_net=False)
        rng = np.random.default_rng(3)
        meta = rng.normal(size=(12, 3))
        test = (rng.normal(size=(9, 3)), rng.integers(0, 3, 9))
        selection = selection_lib.ClidSelection(meta, test=test, batch_size=6, tau=0.5,
                                                keep=2, directory=str(tmp_path),
                                                backbone=model.ema_backbone)
        before, after = _Recorder(), _Recorder()  # around the evaluation
        stream = tf.data.Dataset.from_generator(
            lambda: (_data(seed=i) for i in range(100)),
            output_signature=tf.nest.map_structure(
                lambda a: tf.TensorSpec(np.shape(a), tf.as_dtype(np.asarray(a).dtype)),
                _data()))
        model.fit(stream, epochs=4, steps_per_epoch=2, verbose=0,
                  callbacks=[before, selection, after])
        summary = selection.summary()
        final_ema = [w.numpy() for w in model.ema_backbone.weights]
        probe = keras.models.clone_model(model.backbone)
        members = selection.members(2)
    assert summary["selected_epoch"] == 1 + int(np.argmin(summary["meta_clid"]))
    for epoch in range(1, 5):  # the evaluation left the live and EMA weights bit-identical
        for a, b in zip(before.live[epoch] + before.ema[epoch],
                        after.live[epoch] + after.ema[epoch]):
            np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(before.live[4], before.ema[4]))
    # Each evaluation scored that evaluation's EMA network (averaged parameters, buffers
    # of the live network).
    for epoch, accuracy in zip(summary["epochs"], summary["test_accuracy"]):
        probe.set_weights(before.ema[epoch])
        logits = probe(test[0], training=False)[0].numpy()
        assert accuracy == selection_lib.accuracy(logits, test[1])
    # Reloading a kept evaluation gives ITS EMA weights, not the final ones (the fork's bug).
    kept = selection.store.best_epochs(2)
    assert kept[0] == summary["selected_epoch"] and min(kept) < 4
    for epoch, member in zip(kept, members):
        for a, b in zip(member.weights, before.ema[epoch]):
            np.testing.assert_array_equal(a.numpy(), b)
        if epoch != 4:
            assert any(not np.array_equal(a.numpy(), b)
                       for a, b in zip(member.weights, final_ema))
