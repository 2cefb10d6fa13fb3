"""DivideMix's pure parts against numpy: the GMM division
and its wiring, co-guessing and co-refinement, mixup, the loss terms and the ramp, the
clip, and the merged top-k of the two networks' selections."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from clid_tf.data import pipelines as data
from clid_tf.trainers.dividemix import mixmatch as dividemix
from clid_tf.trainers.dividemix import streams as dividemix_data
from clid_tf.evaluation import two_nets as dividemix_eval
from clid_tf.data.sources.digits import load_digits
from clid_tf.data import noise
from clid_tf.evaluation import selection
from clid_tf.trainers.meta import small_loss as sloss
from clid_tf.data.inputs import ArrayInputs


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _probs(rng, n, k=4):
    return _softmax(rng.normal(size=(n, k)) * 2)


def _entropy(p):
    return -(p * np.log(p)).sum(axis=-1)


# ---------------------------------------------------------------- 1, 2: the co-divide
def test_gmm_division_of_synthetic_losses_is_precise():
    rng = np.random.default_rng(0)
    noisy = rng.random(2000) < 0.4
    losses = np.where(noisy, rng.gamma(4.0, 0.6, 2000), rng.gamma(1.2, 0.15, 2000))
    prob = sloss.clean_probability(losses, seed=0)
    (part, _) = dividemix.co_divide([np.zeros(2000), prob], threshold=0.5)
    stats = dividemix.division_stats(part, ~noisy)
    assert stats["labeled_precision"] >= 0.95 and stats["labeled_recall"] >= 0.9, stats


def test_gmm_division_after_a_ce_warm_up_on_digits_finds_the_clean_labels():
    """40% symmetric noise, a 64-32-10 MLP after 4 CE epochs, `Streams.clean_probabilities`:
    the labeled part is far cleaner than the data (precision >= base + 0.2, AUC >= 0.85)."""
    ds = load_digits()
    noisy = noise.corrupt(ds.train.labels, kind="sym", rate=0.4, num_classes=10, seed=0)
    clean = noisy == ds.train.labels
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    h = keras.layers.Dense(64, activation="relu")(h)
    features = keras.layers.Dense(32, activation="relu")(h)
    net = keras.Model(inputs, (keras.layers.Dense(10)(features), features))
    trainer = keras.Model(inputs, net(inputs)[0])
    trainer.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(ds.train.inputs.array.astype(np.float32), noisy, epochs=4, batch_size=32,
                verbose=0)
    streams = dividemix_data.Streams(data.Part(ds.train.inputs, None, noisy), meta_sets=None,
                                     batch_size=32)
    prob = streams.clean_probabilities([net], epoch=0)[0]
    (part, _) = dividemix.co_divide([np.zeros_like(prob), prob], threshold=0.5)
    stats = dividemix.division_stats(part, clean)
    assert stats["labeled_precision"] >= clean.mean() + 0.2, stats
    assert roc_auc_score(clean, prob) >= 0.85


def test_each_network_trains_on_the_other_networks_division():
    rng = np.random.default_rng(1)
    prob1, prob2 = rng.random(50), rng.random(50)
    part1, part2 = dividemix.co_divide([prob1, prob2], threshold=0.5)
    for part, other in ((part1, prob2), (part2, prob1)):
        np.testing.assert_array_equal(part.labeled, np.flatnonzero(other > 0.5))
        np.testing.assert_array_equal(part.clean_prob, other)
        np.testing.assert_array_equal(np.sort(np.concatenate([part.labeled, part.unlabeled])),
                                      np.arange(50))
    at_threshold = dividemix.co_divide([np.full(3, 0.5), np.full(3, 0.5)], threshold=0.5)
    assert len(at_threshold[0].labeled) == 0  # strictly greater, as DivideMix


def test_the_epoch_streams_carry_each_networks_part_with_the_other_networks_weights():
    """Images are their own source index, so every batch says which samples it holds."""
    n, batch = 40, 4
    images = np.repeat(np.arange(n, dtype=np.float32)[:, None], 2, axis=1)
    train = data.Part(ArrayInputs(images), np.arange(n), np.arange(n) % 3)
    rng = np.random.default_rng(2)
    probs = [rng.random(n), rng.random(n)]
    parts = dividemix.co_divide(probs, threshold=0.5)
    meta = [data.Part(train.inputs, np.arange(10)), data.Part(train.inputs, np.arange(10, 20))]
    streams = dividemix_data.Streams(train, meta_sets=meta, batch_size=batch,
                                     meta_batch_size=5, is_clean=np.arange(n) % 2 == 0)
    plan = streams.dividemix_epoch(3, parts)
    assert [p.net for p in plan.phases] == [0, 1]
    assert [p.steps for p in plan.phases] == [-(-len(p.labeled) // batch) for p in parts]
    seen = [[], []]
    for step, element in enumerate(plan.stream.as_numpy_iterator()):
        k = 0 if step < plan.phases[0].steps else 1
        ids = element["labeled"]["image"][:, 0].astype(int)
        assert set(ids) <= set(parts[k].labeled)
        np.testing.assert_allclose(element["labeled"]["prob"], probs[1 - k][ids], rtol=1e-6)
        np.testing.assert_array_equal(element["labeled"]["label"], ids % 3)
        assert set(element["unlabeled"]["image"][:, 0].astype(int)) <= set(parts[k].unlabeled)
        assert set(element["meta"]["image"][:, 0].astype(int)) <= set(meta[k].ids())
        seen[k].extend(ids)
    for k in (0, 1):  # one epoch visits the whole labeled part
        assert set(seen[k]) == set(parts[k].labeled)
    assert plan.stats["net1_labeled"] == len(parts[0].labeled)
    is_clean = np.arange(n) % 2 == 0
    assert plan.stats["net2_labeled_precision"] == pytest.approx(is_clean[parts[1].labeled].mean())
    again = streams.dividemix_epoch(3, parts)  # an epoch is a function of (seed, epoch)
    for a, b in zip(plan.stream.as_numpy_iterator(), again.stream.as_numpy_iterator()):
        np.testing.assert_array_equal(a["labeled"]["image"], b["labeled"]["image"])


def test_warm_up_epochs_cover_all_samples_for_each_network_and_steps_are_capped():
    train = data.Part(ArrayInputs(np.zeros((10, 2), np.float32)), np.arange(10),
                      np.zeros(10, int))
    plan = dividemix_data.Streams(train, meta_sets=None, batch_size=4).warmup_epoch(0)
    assert [(p.kind, p.net, p.steps) for p in plan.phases] == [("warmup", 0, 3),
                                                                ("warmup", 1, 3)]
    assert len(list(plan.stream)) == 6
    capped = dividemix_data.Streams(train, meta_sets=None, batch_size=4, max_steps=2)
    assert capped.warmup_epoch(0).steps == 4


# ---------------------------------------------------------------- 3: targets
def test_sharpen():
    p = _probs(np.random.default_rng(3), 6)
    np.testing.assert_allclose(dividemix.sharpen(p, temperature=1.0), p, rtol=1e-12)
    sharp = dividemix.sharpen(p, temperature=0.5).numpy()
    np.testing.assert_allclose(sharp, p ** 2 / (p ** 2).sum(axis=1, keepdims=True), rtol=1e-12)
    assert (_entropy(sharp) <= _entropy(p) + 1e-12).all()


def test_co_guess_and_co_refine_against_numpy():
    rng = np.random.default_rng(4)
    u = [_probs(rng, 5) for _ in range(4)]
    x = [_probs(rng, 6) for _ in range(2)]
    labels, w = rng.integers(0, 4, 6), rng.random(6)
    t_u = dividemix.co_guess(*u, temperature=0.5).numpy()
    want = np.mean(u, axis=0) ** 2
    np.testing.assert_allclose(t_u, want / want.sum(1, keepdims=True), rtol=1e-12)
    t_x = dividemix.co_refine(*x, labels, w, temperature=0.5).numpy()
    refined = (w[:, None] * np.eye(4)[labels] + (1 - w[:, None]) * (x[0] + x[1]) / 2) ** 2
    np.testing.assert_allclose(t_x, refined / refined.sum(1, keepdims=True), rtol=1e-12)
    for t, rows in ((t_u, 5), (t_x, 6)):
        assert t.shape == (rows, 4)
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-12)
    ones = dividemix.co_refine(*x, labels, np.ones(6), temperature=0.5).numpy()
    np.testing.assert_allclose(ones, np.eye(4)[labels], atol=1e-12)
    zeros = dividemix.co_refine(*x, labels, np.zeros(6), temperature=0.5)
    np.testing.assert_allclose(zeros, dividemix.sharpen((x[0] + x[1]) / 2, temperature=0.5),
                               rtol=1e-12)


def test_targets_pass_no_gradient():
    z = tf.Variable(np.random.default_rng(5).normal(size=(3, 4)))
    with tf.GradientTape(persistent=True) as tape:
        p = tf.nn.softmax(z)
        t_u = dividemix.co_guess(p, p, p, p, temperature=0.5)
        t_x = dividemix.co_refine(p, p, tf.constant([0, 1, 2]), tf.constant([0.5] * 3,
                                                                            tf.float64),
                                  temperature=0.5)
    assert tape.gradient(t_u, z) is None and tape.gradient(t_x, z) is None


# ---------------------------------------------------------------- 4: mixup
def test_mixup_is_the_convex_mix_with_one_permutation_of_all_rows():
    rng = np.random.default_rng(6)
    rows = 2 * 3 + 2 * 5  # 2B + 2Bu
    x = rng.normal(size=(rows, 2, 2))
    y = _probs(rng, rows)
    lam, perm = dividemix.mix_draw(tf.constant([7, 11]), rows=rows, alpha=4.0,
                                   dtype=tf.float64)
    lam, perm = float(lam), perm.numpy()
    assert 0.5 <= lam <= 1.0 and sorted(perm) == list(range(rows))
    mixed_x, mixed_y = dividemix.mixup(x, y, lam=lam, permutation=perm)
    np.testing.assert_allclose(mixed_x, lam * x + (1 - lam) * x[perm], atol=1e-12)
    np.testing.assert_allclose(mixed_y, lam * y + (1 - lam) * y[perm], atol=1e-12)
    assert mixed_x.shape == x.shape
    np.testing.assert_allclose(mixed_y.numpy().sum(axis=1), 1.0, rtol=1e-12)
    assert (mixed_y.numpy() >= 0).all() and (mixed_y.numpy() <= 1).all()
    same = np.repeat(x[:1], rows, axis=0)
    np.testing.assert_allclose(dividemix.mixup(same, y, lam=lam, permutation=perm)[0], same,
                               rtol=1e-12)
    sub = np.array([3, 0, 9])
    part, _ = dividemix.mixup(x, y, lam=lam, permutation=perm, rows=sub)
    np.testing.assert_allclose(part, mixed_x.numpy()[sub], rtol=1e-12)
    # the draw is a function of its seed; another seed, another draw
    again = dividemix.mix_draw(tf.constant([7, 11]), rows=rows, alpha=4.0, dtype=tf.float64)
    other = dividemix.mix_draw(tf.constant([7, 12]), rows=rows, alpha=4.0, dtype=tf.float64)
    assert float(again[0]) == lam and (again[1].numpy() == perm).all()
    assert float(other[0]) != lam


def test_lambda_of_mixup_follows_beta():
    """l' ~ Beta(4, 4): mean 1/2, var 1/36; l = max(l', 1 - l') has mean 0.5 + E|l' - 0.5|."""
    draws = np.array([float(dividemix.mix_draw(tf.constant([s, 0]), rows=2, alpha=4.0)[0])
                      for s in range(400)])
    beta = np.random.default_rng(0).beta(4, 4, 200000)
    assert abs(draws.mean() - np.maximum(beta, 1 - beta).mean()) < 0.01


def test_global_layout_on_one_device_is_the_concatenation():
    parts = [tf.constant(np.arange(6.0).reshape(3, 2)), tf.constant(np.ones((2, 2)))]
    batch, rows = dividemix.global_layout(parts)
    np.testing.assert_array_equal(batch, np.concatenate([p.numpy() for p in parts]))
    np.testing.assert_array_equal(rows, np.arange(5))


# ---------------------------------------------------------------- 5: losses and ramp
def test_loss_terms_against_numpy():
    rng = np.random.default_rng(8)
    z, rect = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    y = _probs(rng, 10)
    terms = dividemix.mixmatch_loss(rect, z, y, num_labeled=4, lambda_u=3.0)
    p = _softmax(rect)
    l_x = -(y[:4] * np.log(p[:4])).sum(axis=1).mean()
    l_u = ((p[4:] - y[4:]) ** 2).mean()  # over rows AND classes, not summed over K
    pbar = _softmax(z).mean(axis=0)
    pen = (0.25 * np.log(0.25 / pbar)).sum()
    for got, want in ((terms.l_x, l_x), (terms.l_u, l_u), (terms.penalty, pen),
                      (terms.total, l_x + 3.0 * l_u + pen)):
        np.testing.assert_allclose(float(got), want, rtol=1e-12)
    assert pen >= 0
    uniform = np.concatenate([np.eye(4), np.eye(4)]) * 3.0  # mean prediction uniform
    assert abs(float(dividemix.uniform_penalty(uniform))) < 1e-12


def test_row_losses_average_to_l_x_plus_lambda_l_u():
    """The rows a meta-net weights: their mean is L_x + lambda L_u (unequal parts)."""
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=(10, 4)), _probs(rng, 10)
    rows = dividemix.row_losses(z, y, num_labeled=4, lambda_u=3.0).numpy()
    p = _softmax(z)
    ce = -(y[:4] * np.log(p[:4])).sum(axis=1)
    se = ((p[4:] - y[4:]) ** 2).mean(axis=1)
    np.testing.assert_allclose(rows, np.concatenate([ce * 10 / 4, 3.0 * se * 10 / 6]),
                               rtol=1e-12)
    terms = dividemix.mixmatch_loss(z, z, y, num_labeled=4, lambda_u=3.0)
    np.testing.assert_allclose(rows.mean(), float(terms.l_x + 3.0 * terms.l_u), rtol=1e-12)


def test_lambda_ramp():
    wu, lam = 10, 150.0
    got = [float(dividemix.lambda_ramp(t, lambda_u=lam, warmup=wu, rampup=16))
           for t in (wu - 1, wu, wu + 8, wu + 16, wu + 40)]
    assert got == pytest.approx([0, 0, lam / 2, lam, lam])
    assert float(dividemix.lambda_ramp(wu, lambda_u=lam, warmup=wu, rampup=0)) == lam
    assert float(dividemix.lambda_ramp(wu - 0.5, lambda_u=lam, warmup=wu, rampup=0)) == 0


def test_negative_entropy():
    z = np.random.default_rng(9).normal(size=(5, 3))
    p = _softmax(z)
    np.testing.assert_allclose(float(dividemix.negative_entropy(z)),
                               (p * np.log(p)).sum(axis=1).mean(), rtol=1e-12)


# ---------------------------------------------------------------- 9: the clip
def test_clip_by_global_norm_keeps_the_direction_and_caps_the_norm():
    rng = np.random.default_rng(10)
    grads = [tf.constant(rng.normal(size=(3, 2))), tf.constant(rng.normal(size=(4,)))]
    norm = np.sqrt(sum((g.numpy() ** 2).sum() for g in grads))
    clipped, got_norm = dividemix.clip_by_global_norm(grads, 0.8)
    assert float(got_norm) == pytest.approx(norm)
    new_norm = np.sqrt(sum((g.numpy() ** 2).sum() for g in clipped))
    assert new_norm <= 0.8 + 1e-6
    for c, g in zip(clipped, grads):
        np.testing.assert_allclose(c, g * 0.8 / (norm + 1e-6), rtol=1e-12)
    small = [g * 0.01 for g in grads]  # under the norm: unchanged
    for c, g in zip(dividemix.clip_by_global_norm(small, 0.8)[0], small):
        np.testing.assert_array_equal(c, g)
    for c, g in zip(dividemix.clip_by_global_norm(grads, 0.0)[0], grads):
        np.testing.assert_array_equal(c, g)


# ---------------------------------------------------------------- 10: evaluation tables
def _store(rows):
    store = selection.TopKLogits(5)
    for score, epoch, logits in rows:
        store.update(score, epoch, np.asarray(logits, np.float64))
    return store


def test_merged_top_k_over_both_networks_pools():
    """Hand-made CLID tables: net 1 epochs 1-6, net 2 epochs 1-6; the merged top-5 is the
    5 lowest scores of both pools (ties: earlier epoch, then net 1), logits summed."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(2, 7, 3, 4))
    scores = [[4.0, 3.0, 2.5, 2.0, 3.5, 5.0], [4.5, 2.2, 2.5, 1.0, 3.0, 6.0]]
    stores = [_store([(scores[n][e - 1], e, logits[n, e]) for e in range(1, 7)])
              for n in (0, 1)]
    merged = selection.merged_top_k(stores, 5)
    assert [(i + 1, e.epoch) for i, e in merged] == [(2, 4), (1, 4), (2, 2), (1, 3), (2, 3)]
    want = logits[1, 4] + logits[0, 4] + logits[1, 2] + logits[0, 3] + logits[1, 3]
    np.testing.assert_allclose(selection.merged_ensemble_logits(stores, 5), want, rtol=1e-12)
    assert len(selection.merged_top_k(stores, 50)) == 10  # capped at what is stored
    assert stores[0].best_epochs() == [4, 3, 2, 5, 1]  # per net: its own top-5

    class Selected:  # what TwoNetEvaluation reads of a ClidSelection
        def __init__(self, store, last):
            self.store, self.last_test_logits = store, last

    labels = rng.integers(0, 4, 3)
    evaluation = dividemix_eval.TwoNetEvaluation(
        [Selected(stores[0], logits[0, 6]), Selected(stores[1], logits[1, 6])], labels)
    logs = {}
    evaluation.on_epoch_end(5, logs)
    acc = lambda z: float(np.mean(np.argmax(z, axis=1) == labels))  # noqa: E731
    assert logs["test_accuracy"] == acc(logits[0, 6] + logits[1, 6])
    assert logs["selected_accuracy"] == acc(logits[0, 4] + logits[1, 4])
    assert logs["merged_selected_accuracy"] == acc(logits[1, 4])
    assert logs["ensemble5_accuracy"] == acc(want)
    summary = evaluation.summary()
    assert summary["selected"] == {"net1": 4, "net2": 4}
    assert summary["kept"][0] == {"net": 2, "epoch": 4, "meta_clid": 1.0}


def test_the_gmm_sees_the_mean_of_the_last_epochs_losses_kept_in_checkpointed_variables(
        tmp_path):
    """average_epochs=2 (DivideMix's 5 at 90% noise): the second epoch's GMM fits the mean
    of both epochs' normalised losses; the history lives in the variables a checkpoint
    holds, and a fresh Streams restored from it continues alike."""
    rng = np.random.default_rng(12)
    images = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    net = keras.Model(inputs, (dense(inputs), inputs))
    train = data.Part(ArrayInputs(images), np.arange(30), labels)

    def losses():
        logits = net(images)[0].numpy().astype(np.float64)
        return sloss.normalize_losses(sloss.cross_entropy(logits, labels))

    streams = dividemix_data.Streams(train, meta_sets=None, batch_size=4, average_epochs=2)
    first = losses()
    np.testing.assert_allclose(streams.clean_probabilities([net, net], epoch=0)[0],
                               sloss.clean_probability(first, seed=1), rtol=1e-12)
    saved = tf.train.Checkpoint(**streams.checkpoint_parts()).write(
        str(tmp_path / "ckpt"))
    dense.kernel.assign(dense.kernel * 3.0)
    second = losses()
    want = sloss.clean_probability((first + second) / 2, seed=2)
    np.testing.assert_allclose(streams.clean_probabilities([net, net], epoch=1)[0], want,
                               rtol=1e-12)
    resumed = dividemix_data.Streams(train, meta_sets=None, batch_size=4, average_epochs=2)
    tf.train.Checkpoint(**resumed.checkpoint_parts()).read(saved).assert_consumed()
    np.testing.assert_allclose(resumed.clean_probabilities([net, net], epoch=1)[0], want,
                               rtol=1e-12)
