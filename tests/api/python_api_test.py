"""The Python API as a Keras user meets it: any Keras classifier, fit on arrays or a
tf.data.Dataset, callbacks that combine with Keras' own, save/load, label issues."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import clid_tf
from clid_tf.data.sources.digits import load_digits
from clid_tf.data import noise
from tests.helpers import QUIET_ENV, ROOT

DIGITS = load_digits()
X = DIGITS.train.inputs.array.astype("float32") / 255.0
Y = DIGITS.train.labels
X_TEST, Y_TEST = DIGITS.test.inputs.array.astype("float32") / 255.0, DIGITS.test.labels


def _sequential(seed=0):
    """A plain Keras classifier ending in a softmax Dense layer (no features output)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def _compiled(backbone, meta_net):
    model = clid_tf.MetaReweightModel(backbone, meta_net, meta_objective="clid")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  meta_optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_fit_on_arrays_trains_the_users_own_model_with_a_label_free_meta_set():
    user_model = _sequential()
    head_before = user_model.layers[-1].kernel.numpy().copy()
    model = _compiled(user_model, clid_tf.WeightNet())
    history = model.fit(X, Y, batch_size=100, epochs=2, meta_size=300, meta_batch_size=100,
                        callbacks=[clid_tf.WarmUp(1)], verbose=0).history
    assert len(history["loss"]) == len(history["meta_clid"]) == 2
    assert np.isnan(history["meta_clid"][0]) and np.isfinite(history["meta_clid"][1])  # warm-up
    meta = model.meta_set
    assert len(meta) == 300 and meta.labels is None  # drawn from the inputs, no labels
    assert len(np.unique(meta.ids())) == 300 and meta.ids().max() < len(X)
    # The Dense head was tapped, not copied: the user's own model is what got trained.
    assert not np.allclose(user_model.layers[-1].kernel.numpy(), head_before)
    logits, features = model.backbone(X[:4], training=False)
    assert logits.shape == (4, 10) and features.shape == (4, 32)
    np.testing.assert_allclose(tf.nn.softmax(logits), user_model(X[:4]), rtol=1e-5, atol=1e-6)


def test_fit_on_a_dataset_sizes_vri_for_the_backbone():
    data = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(2000, seed=0).batch(64)
    model = _compiled(_sequential(), clid_tf.VRINet())  # no sizes given
    history = model.fit(data, epochs=2, meta_size=256, callbacks=[clid_tf.WarmUp(1)],
                        verbose=0).history
    assert model.meta_net.feature_dim == 32 and model.meta_net.num_classes == 10
    assert model.meta_set.inputs.array.shape == (256, 8, 8, 1)
    assert np.isnan(history["meta_clid"][0]) and np.isfinite(history["meta_clid"][1:]).all()


def test_a_model_without_a_dense_head_is_refused_in_one_line():
    pooled = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(10, 3),
                               keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError) as error:
        clid_tf.MetaReweightModel(pooled, clid_tf.WeightNet())
    assert "has no Dense head" in str(error.value) and "\n" not in str(error.value)


def test_save_and_load_round_trip(tmp_path):
    model = _compiled(_sequential(), clid_tf.WeightNet())
    model.fit(X[:400], Y[:400], batch_size=100, epochs=2, meta_size=100,
              callbacks=[clid_tf.WarmUp(1)], verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(X_TEST[:32], verbose=0),
                               model.predict(X_TEST[:32], verbose=0), rtol=1e-6, atol=1e-6)
    for a, b in zip(loaded.meta_net.weights, model.meta_net.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 8
    assert int(loaded.meta_optimizer.iterations) == 4
    loaded.fit(X[:400], Y[:400], batch_size=100, epochs=1, meta_size=100, verbose=0)
    assert int(loaded.optimizer.iterations) == 12  # it trains on


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = [w.copy() for w in self.model.backbone.get_weights()]


def test_selection_keeps_the_lowest_clid_epochs_weights(tmp_path):
    model = _compiled(_sequential(), clid_tf.WeightNet())
    selection = clid_tf.ClidSelection(test=(X_TEST, Y_TEST), keep=2, batch_size=100)
    snapshots = _Snapshots()
    model.fit(X, Y, batch_size=100, epochs=4, meta_size=200,
              callbacks=[clid_tf.WarmUp(1), selection, snapshots,
                         keras.callbacks.TensorBoard(str(tmp_path / "tb"))], verbose=0)
    summary = selection.summary()
    order = np.argsort(summary["meta_clid"], kind="stable")
    assert [k["epoch"] for k in summary["kept"]] == [int(e) + 1 for e in order[:2]]
    for member, kept in zip(selection.members(2), summary["kept"]):
        for got, want in zip(member.get_weights(), snapshots.weights[kept["epoch"]]):
            np.testing.assert_array_equal(got, want)
    selected = summary["selected_epoch"]
    clone = selection.members(1)[0]
    logits = clone(X_TEST, training=False)[0].numpy()
    assert summary["selected_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == Y_TEST))
    assert selected == summary["kept"][0]["epoch"]


def test_find_label_issues_ranks_flipped_labels_first_out_of_sample():
    noisy = noise.corrupt(Y, kind="sym", rate=0.4, num_classes=10, seed=0)
    flipped = noisy != Y
    issues = clid_tf.find_label_issues(
        lambda: _compiled(_sequential(), clid_tf.WeightNet()), X, noisy, folds=2,
        clean_labels=Y, epochs=6, batch_size=100, meta_size=200,
        callbacks=[clid_tf.WarmUp(2)], verbose=False)
    assert issues.metrics["roc_auc"] > 0.85
    assert len(issues.ranked) == len(Y) and set(issues.ranked) == set(range(len(Y)))
    np.testing.assert_array_equal(issues.issues, [i for i in issues.ranked if issues.flagged[i]])
    assert abs(issues.metrics["estimated_noise_rate"] - flipped.mean()) < 0.15
    assert issues.scores.weights is not None and issues.scores.weights.shape == (len(Y),)


def test_every_readme_python_block_runs_in_order(tmp_path, monkeypatch):
    """The README's Python blocks, run one after the other in one namespace in a fresh
    folder (the last one serves the export of a short command-line run, made first): the
    main example's meta-set CLID moves and its selection picks an epoch after the
    warm-up."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "clid_tf.train", "--epochs=1",
                           "--workdir=runs/digits-clid-readme"], cwd=tmp_path,
                          env={**QUIET_ENV, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    namespace = {}
    for number, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {number + 1}", "exec"),  # pylint: disable=exec-used
             namespace)
    assert os.path.isfile(tmp_path / "model.keras") and os.path.isdir(tmp_path / "served")
    summary = namespace["summary"]
    assert max(summary["meta_clid"]) - min(summary["meta_clid"]) > 0.1
    assert summary["selected_epoch"] > 5  # an epoch with meta steps, after WarmUp(5)
    assert isinstance(namespace["reloaded"], clid_tf.MetaReweightModel)
    assert len(namespace["issues"].ranked) == len(namespace["y_train"])
    with Image.open(tmp_path / "suspects.png") as sheet:
        assert sheet.size[0] == 8 * (96 + 8)  # 8 columns of 8x8 digits upscaled 12x
    assert namespace["out"]["probabilities"].shape == (4, 10)
    # the text and two-input examples: trained models of their own inputs, the table served
    reviewer, tabular = namespace["reviewer"], namespace["tabular"]
    assert reviewer.input.dtype == "string" and sorted(tabular.input) == ["category", "numbers"]
    served = tf.saved_model.load(str(tmp_path / "served_table")).signatures["serving_default"]
    test = namespace["test"]
    out = served(category=tf.constant(test["category"][:8]),
                 numbers=tf.constant(test["numbers"][:8]))
    np.testing.assert_array_equal(out["class_ids"].numpy(), namespace["model"].predict(
        {k: v[:8] for k, v in test.items()}, verbose=0).argmax(-1))


def test_dividemix_composes_from_a_users_own_keras_models_and_arrays():
    """The DivideMix trainer as parts: two of the user's Keras classifiers, VRI rectifiers,
    the user's arrays and noisy labels; a warm-up epoch and a DivideMix + VRI + CLID epoch
    train both networks and both rectifiers, and the model predicts the user's softmax of
    the two networks' mean logits."""
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines as data
    from clid_tf.trainers.dividemix import streams as dividemix_data
    from clid_tf.data.inputs import ArrayInputs
    y = noise.corrupt(Y, kind="sym", rate=0.4, num_classes=10, seed=0)
    nets = [clid_tf.as_classifier(_sequential(seed)) for seed in (0, 1)]
    rectifiers = [clid_tf.VRINet(10, net.feature_dim, seed=seed)
                  for seed, net in enumerate(nets)]
    model = clid_tf.DivideMixModel(nets, rectifiers, warmup_epochs=1, lambda_u=25.0)
    model.compile([keras.optimizers.SGD(0.05, momentum=0.9) for _ in nets],
                  [keras.optimizers.Adam(1e-3) for _ in nets])
    source = ArrayInputs(X)
    rng = np.random.default_rng(0)
    streams = dividemix_data.Streams(
        data.Part(source, None, y),
        meta_sets=[data.Part(source, rng.choice(len(X), 64, replace=False)) for _ in nets],
        batch_size=32, meta_batch_size=32, max_steps=4,
        augment=augment.build("weak", image_shape=(8, 8, 1), seed=0, pad=1))
    before = [[v.numpy() for v in m.trainable_variables] for m in [*nets, *rectifiers]]
    model.fit(streams, epochs=2)
    after = [[v.numpy() for v in m.trainable_variables] for m in [*nets, *rectifiers]]
    assert all(any(not np.array_equal(a, b) for a, b in zip(new, old))
               for new, old in zip(after, before))
    probs = model.predict(X_TEST, verbose=0)
    mean = sum(net(X_TEST, training=False)[0].numpy() for net in nets) / 2
    np.testing.assert_allclose(probs, tf.nn.softmax(mean).numpy(), rtol=1e-4, atol=1e-5)
    assert np.isfinite(model.epoch_logs()["loss"])


def test_fixmatch_composes_from_a_users_own_keras_model_and_arrays():
    """The semi-supervised trainer as parts: the user's classifier, an unnormalised
    loss-net, 100 noisy labels and the rest of the user's images unlabeled."""
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.fixmatch import streams as ssl_streams
    from clid_tf.data.inputs import ArrayInputs
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    labeled, unlabeled, meta = order[:100], order[100:], order[100:164]
    y = noise.corrupt(Y, kind="sym", rate=0.4, num_classes=10, seed=0)
    net = clid_tf.as_classifier(_sequential(0))
    model = clid_tf.FixMatchModel(net, clid_tf.WeightNet(normalize=False), algorithm="flexmatch",
                                  num_unlabeled=len(unlabeled), ema_decay=0.9)
    model.compile(keras.optimizers.SGD(0.03, momentum=0.9, nesterov=True),
                  keras.optimizers.Adam(1e-3))
    weak, strong = (augment.build(kind, image_shape=(8, 8, 1), seed=0, pad=1)
                    for kind in ("weak", "strong"))
    stream = ssl_streams.ssl_stream(
        ArrayInputs(X), labeled=labeled, labels=y, unlabeled=unlabeled, meta=meta,
        weak=weak, strong=strong, batch_size=16, unlabeled_batch_size=48, meta_batch_size=32,
        seed=0, steps_per_epoch=5, with_positions=True)
    loss_net_before = [v.numpy() for v in model.meta_net.trainable_variables]
    history = model.fit(stream, epochs=2, steps_per_epoch=5, shuffle=False, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert any(not np.array_equal(v.numpy(), b)
               for v, b in zip(model.meta_net.trainable_variables, loss_net_before))
    assert model.ema_backbone(X_TEST, training=False)[0].shape == (len(X_TEST), 10)
