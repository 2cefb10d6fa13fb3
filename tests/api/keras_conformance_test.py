"""The three trainer models as a Keras user uses them, item by item: (1) save and load in a
fresh process, (2) a global mixed-precision policy, (3) compile, (4) fit's arguments and
one-message refusals, (5) predict and export, (6) Keras' resume and stop callbacks,
(7) DivideMix and FixMatch fit on plain arrays. Against plain functional, Sequential and
subclassed Keras models with a softmax head, on digits scaled to [0, 1]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import clid_tf
from tests.helpers import QUIET_ENV, ROOT
from tests.helpers import keras_users as users

X, Y, CLEAN = users.digits(600)
X_TEST = X[:64]


def _meta_model(kind="functional", meta_net="wnet", seed=0, **kwargs):
    net = users.BUILDERS[kind](seed)
    meta = {"wnet": clid_tf.WeightNet(seed=seed), "vri": clid_tf.VRINet(seed=seed),
            None: None}[meta_net]
    model = clid_tf.MetaReweightModel(net, meta, **kwargs)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    return model


def _weights(model):
    return [np.array(v) for v in model.backbone.trainable_variables]


def _refused(model, call, match):
    """`call` raises one ValueError matching `match` before the first training step."""
    with pytest.raises(ValueError, match=match) as raised:
        call()
    assert "\n" not in str(raised.value)
    assert int(model.optimizer.iterations.numpy()) == 0


# ---------------------------------------------------------------- 1. save and load
SCRIPT = textwrap.dedent("""
    import json, sys
    import clid_tf
    assert "tensorflow" not in sys.modules, "import clid_tf started TensorFlow"
    import keras, numpy as np
    from tests.helpers import keras_users
    x = np.load(sys.argv[1] + "/x.npy")
    out = {}
    for name in sys.argv[2:]:
        model = keras.models.load_model(f"{sys.argv[1]}/{name}.keras")
        output = model(x) if name == "backbone" else model.predict(x, verbose=0)
        out[name] = np.asarray(output[0] if name == "backbone" else output).tolist()
    print(json.dumps(out))
    """)


def test_every_trainer_model_and_a_backbone_load_in_a_fresh_process(tmp_path):
    """A `.keras` file of each model (and of a trained backbone) loads in a new process
    after `import clid_tf` (which does not start TensorFlow) and predicts the same."""
    meta = _meta_model("functional", "vri")
    meta.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0)
    divide = clid_tf.DivideMixModel([users.sequential(0), users.sequential(1)],
                                    [clid_tf.VRINet(seed=0), clid_tf.VRINet(seed=1)],
                                    warmup_epochs=1)
    divide.compile("sgd", "adam")
    divide.fit(X, Y, epochs=2, batch_size=64, meta_size=64, verbose=0)
    fix = clid_tf.FixMatchModel(users.subclassed(0), clid_tf.WeightNet(normalize=False),
                                algorithm="flexmatch", num_unlabeled=500)
    fix.compile("sgd", "adam")
    fix.fit(X[:100], Y[:100], unlabeled=X[100:], epochs=1, steps_per_epoch=2, batch_size=20,
            uratio=2, meta_size=40, verbose=0)
    models = {"meta": meta, "divide": divide, "fix": fix, "backbone": meta.backbone}
    for name, model in models.items():
        model.save(tmp_path / f"{name}.keras")
    np.save(tmp_path / "x.npy", X_TEST)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *models], cwd=ROOT,
                          env={**QUIET_ENV, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for name, model in models.items():
        want = (model.predict(X_TEST, verbose=0) if name != "backbone"
                else model(X_TEST)[0].numpy())
        np.testing.assert_allclose(np.asarray(loaded[name]), want, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_classes_are_registered_whichever_is_imported_first():
    code = ("import keras, clid_tf; "
            "print(keras.saving.get_registered_object('clid_tf>FixMatchModel') is not None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("True"), done.stderr[-2000:]


def test_an_uncompiled_model_and_a_renamed_objective_round_trip(tmp_path):
    """An uncompiled model saves and loads uncompiled; a labelled objective under another
    logged name keeps both its objective and its name, and trains (its meta batches carry
    the labels it reads)."""
    plain = clid_tf.MetaReweightModel(users.functional(0), clid_tf.WeightNet(seed=0))
    plain.save(tmp_path / "plain.keras")
    assert not keras.models.load_model(tmp_path / "plain.keras").compiled
    model = _meta_model(meta_objective="ce_noisy", meta_objective_name="noisyce")
    history = model.fit(X[:200], Y[:200], epochs=1, batch_size=50, meta_size=50, verbose=0)
    assert "meta_noisyce" in history.history
    model.save(tmp_path / "named.keras")
    again = keras.models.load_model(tmp_path / "named.keras")
    assert again.meta_objective_name == "noisyce"
    assert again.get_config()["meta_objective"] == "ce_noisy"


# ---------------------------------------------------------------- 2. mixed precision
@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("meta_net", ["wnet", "vri"])
def test_a_global_mixed_float16_policy_set_first(mixed_float16, meta_net):
    """The backbone computes in float16 with loss scaling on both optimizers; the
    meta-net stays float32; training stays finite; predictions are float32."""
    del mixed_float16
    model = _meta_model("functional", meta_net)
    assert model.backbone.layers[-1].compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in model.meta_net.weights if v.trainable)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.meta_optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(X, Y, epochs=2, batch_size=64, meta_size=64, verbose=0,
                        callbacks=[clid_tf.WarmUp(1)])
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.isfinite(history.history["meta_clid"][-1])
    probs = model.predict(X_TEST, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_trainers_without_loss_scaling_refuse_float16(mixed_float16):
    del mixed_float16
    model = clid_tf.DivideMixModel([users.functional(0), users.functional(1)])
    with pytest.raises(ValueError, match="no loss scaling.*mixed_bfloat16"):
        model.compile("sgd")


# ---------------------------------------------------------------- 3. compile
def test_compile_takes_optimizer_names_and_configs_and_reports_metrics():
    model = clid_tf.MetaReweightModel(users.functional(), clid_tf.WeightNet())
    model.compile({"class_name": "SGD", "config": {"learning_rate": 0.05}}, "adam",
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(3)])
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert isinstance(model.meta_optimizer, keras.optimizers.Adam)
    history = model.fit(X, Y, epochs=2, batch_size=64, meta_size=64, verbose=0,
                        validation_data=(X_TEST, CLEAN[:64])).history
    for name in ("accuracy", "sparse_top_k_categorical_accuracy", "val_accuracy",
                 "val_sparse_top_k_categorical_accuracy", "val_loss"):
        assert len(history[name]) == 2, name
    scores = model.evaluate(X_TEST, CLEAN[:64], verbose=0, return_dict=True)
    assert set(scores) == {"loss", "accuracy", "sparse_top_k_categorical_accuracy"}
    want = np.mean(model.predict(X_TEST, verbose=0).argmax(axis=1) == CLEAN[:64])
    assert scores["accuracy"] == pytest.approx(want)
    loss, accuracy, _ = model.evaluate(X_TEST, CLEAN[:64], verbose=0)  # Keras' order
    assert (loss, accuracy) == (pytest.approx(scores["loss"]), pytest.approx(want))


def test_compile_refuses_a_loss_with_one_message():
    model = clid_tf.MetaReweightModel(users.functional(), clid_tf.WeightNet())
    with pytest.raises(ValueError, match="defines its own training loss"):
        model.compile("sgd", "adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="optimizer: .*nadamax"):
        model.compile("nadamax", "adam")


def test_dividemix_compile_gives_each_network_its_own_optimizer():
    model = clid_tf.DivideMixModel([users.functional(0), users.functional(1)],
                                   [clid_tf.VRINet(), clid_tf.VRINet()])
    model.compile(keras.optimizers.SGD(0.02, momentum=0.9), "adam")
    first, second = model.net_optimizers
    assert first is not second and first.get_config() == second.get_config()
    assert model.meta_optimizers[0] is not model.meta_optimizers[1]


# ---------------------------------------------------------------- 4. fit's arguments
def test_sample_weights_scale_each_term_with_its_meta_weight():
    """sample_weight = 2 everywhere doubles the loss, so with plain SGD and no weight decay
    it trains exactly as the unweighted loss at twice the learning rate (virtual step,
    meta step and actual step alike); class_weight = 2 for every class is the same."""
    def trained(lr, **weights):
        model = clid_tf.MetaReweightModel(users.functional(), clid_tf.WeightNet(seed=0),
                                          weight_decay=0.0, meta_weight_decay=0.0)
        model.compile(keras.optimizers.SGD(lr), keras.optimizers.Adam(1e-3))
        model.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0, **weights)
        return _weights(model)

    doubled = trained(0.1)
    unweighted = trained(0.05)
    for weights in ({"sample_weight": np.full(len(X), 2.0)},
                    {"class_weight": {c: 2.0 for c in range(10)}}):
        got = trained(0.05, **weights)
        for a, b, c in zip(got, doubled, unweighted):  # float32 rounding, 9 steps
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
        assert max(np.abs(a - c).max() for a, c in zip(got, unweighted)) > 1e-2


def test_a_dataset_of_zero_weights_leaves_the_classifier_unchanged():
    model = _meta_model("sequential", weight_decay=0.0)
    before = _weights(model)
    data = tf.data.Dataset.from_tensor_slices((X, Y, np.zeros(len(X), np.float32))).batch(64)
    model.fit(data, epochs=1, meta_size=64, verbose=0)
    assert int(model.optimizer.iterations.numpy()) > 0
    for got, want in zip(_weights(model), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("labels", ["column", "one_hot", "dict_dataset"])
def test_label_forms_train_alike(labels):
    """[N, 1] and one-hot labels, and a Dataset of {'image', 'label'} dicts, train as int
    labels [N] do (the Dataset in its own batch order, compared with the same Dataset of
    tuples)."""
    def trained(x=None, y=None, **kwargs):
        model = _meta_model("functional")
        model.fit(x, y, epochs=1, meta_size=64, verbose=0, **kwargs)
        return _weights(model)

    if labels == "dict_dataset":
        got = trained(tf.data.Dataset.from_tensor_slices({"image": X, "label": Y}).batch(64))
        want = trained(tf.data.Dataset.from_tensor_slices((X, Y)).batch(64))
    else:
        shaped = Y[:, None] if labels == "column" else np.eye(10)[Y]
        got, want = trained(X, shaped, batch_size=64), trained(X, Y, batch_size=64)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_validation_split_holds_out_the_last_samples():
    model = _meta_model("functional")
    history = model.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0,
                        validation_split=0.25).history
    held = model.evaluate(X[450:], Y[450:], verbose=0, return_dict=True)
    assert history["val_accuracy"][-1] == pytest.approx(held["accuracy"])
    assert history["val_loss"][-1] == pytest.approx(held["loss"], rel=1e-5)


def test_validation_data_as_a_dataset_and_initial_epoch_continue_exactly():
    """Two fits (epochs 0-1, then initial_epoch=2 to 4) reach the weights of one fit of
    four epochs; validation data may be a Dataset."""
    valid = tf.data.Dataset.from_tensor_slices((X_TEST, CLEAN[:64])).batch(32)
    straight = _meta_model("functional", "vri")
    straight.fit(X, Y, epochs=4, batch_size=64, meta_size=64, verbose=0,
                 callbacks=[clid_tf.WarmUp(1)])
    split = _meta_model("functional", "vri")
    split.fit(X, Y, epochs=2, batch_size=64, meta_size=64, verbose=0,
              callbacks=[clid_tf.WarmUp(1)])
    history = split.fit(X, Y, epochs=4, initial_epoch=2, batch_size=64, meta_size=64,
                        verbose=0, callbacks=[clid_tf.WarmUp(1)], validation_data=valid)
    assert len(history.history["val_accuracy"]) == 2
    for a, b in zip(_weights(split), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


REFUSED = [
    ("fractional labels", dict(y=Y + 0.5), "fractional"),
    ("label K", dict(y=np.where(Y == 3, 10, Y)), "label 10, outside the model's classes 0..9"),
    ("label -1", dict(y=np.where(Y == 3, -1, Y)), "label -1"),
    ("soft labels", dict(y=np.full((len(X), 10), 0.1)), "not one-hot"),
    ("one-hot of 3 classes", dict(y=np.eye(3)[Y % 3]), r"\[N\] or \[N, 1\]"),
    ("short labels", dict(y=Y[:-1]), "600 samples but y has 599"),
    ("short weights", dict(y=Y, sample_weight=np.ones(10)), "one weight per sample"),
    ("negative weights", dict(y=Y, sample_weight=-np.ones(len(X))), ">= 0"),
    ("class weights keyed by name", dict(y=Y, class_weight={"cat": 1.0}), "class ids 0..K-1"),
    ("a split beside validation data", dict(y=Y, validation_split=0.1,
                                            validation_data=(X_TEST, Y[:64])), "not both"),
]


@pytest.mark.parametrize("case, arguments, match", REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_fit_arguments_are_one_value_error_before_training(case, arguments, match):
    del case
    model = _meta_model("functional")
    _refused(model, lambda: model.fit(X, **arguments, batch_size=64, meta_size=64,
                                      verbose=0), match)


def test_bad_datasets_and_meta_nets_are_one_value_error():
    model = _meta_model("functional")
    fit = lambda data: lambda: model.fit(data, meta_size=64, verbose=0)  # noqa: E731
    _refused(model, fit(tf.data.Dataset.from_tensor_slices({"pixels": X, "label": Y})
                        .batch(64)), "keys 'image' and 'label'.*'pixels'")
    _refused(model, fit(tf.data.Dataset.from_tensor_slices((X, Y))), "batch it first")
    _refused(model, lambda: model.fit(tf.data.Dataset.from_tensor_slices((X, Y)).batch(8),
                                      Y, verbose=0), "inside the Dataset")
    with pytest.raises(ValueError, match=r"instance, e.g. WeightNet\(\)"):
        clid_tf.MetaReweightModel(users.functional(), clid_tf.WeightNet)
    with pytest.raises(ValueError, match="never called"):
        clid_tf.MetaReweightModel(users.Subclassed(), clid_tf.WeightNet())


# ---------------------------------------------------------------- 5. predict and export
@pytest.mark.parametrize("kind", ["functional", "sequential", "subclassed"])
def test_predict_returns_what_the_users_model_returns(kind):
    """Probabilities of the softmax head: the user's own (trained) model's predictions,
    and the softmax of the logits the trainer works with."""
    net = users.BUILDERS[kind](0)
    model = clid_tf.MetaReweightModel(net, clid_tf.WeightNet())
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam")
    model.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0)
    probs = model.predict(X_TEST, verbose=0)
    np.testing.assert_allclose(probs, net.predict(X_TEST, verbose=0), rtol=1e-5, atol=1e-6)
    logits = model.backbone(X_TEST)[0].numpy()
    np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), rtol=1e-5, atol=1e-6)


def test_a_linear_head_predicts_logits():
    model = clid_tf.MetaReweightModel(users.functional(activation="linear"),
                                      clid_tf.WeightNet())
    np.testing.assert_allclose(model.predict(X_TEST, verbose=0),
                               model.backbone(X_TEST)[0].numpy(), rtol=1e-6)


def test_keras_export_serves_what_predict_returns(tmp_path):
    model = _meta_model("sequential")
    model.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0)
    model.export(str(tmp_path / "exported"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "exported"))  # kept: it owns the variables
    served = loaded.serve(tf.constant(X_TEST))
    np.testing.assert_allclose(served.numpy(), model.predict(X_TEST, verbose=0), rtol=1e-5,
                               atol=1e-6)
    # TensorFlow Serving clients name the one input `inputs`
    by_name = loaded.signatures["serving_default"](inputs=tf.constant(X_TEST))
    np.testing.assert_allclose(list(by_name.values())[0].numpy(), served.numpy(), atol=1e-6)


def test_export_saved_model_of_a_float_model_takes_its_range(tmp_path):
    """A model trained on floats in [0, 1]: serving_default takes float32 images in [0, 1],
    serving_bytes decodes PNG pixels and divides them by 255; both give its softmax."""
    from clid_tf.runs import export  # pylint: disable=import-outside-toplevel
    model = _meta_model("functional")
    model.fit(X, Y, epochs=1, batch_size=64, meta_size=64, verbose=0)
    clid_tf.export_saved_model(model, tmp_path / "served")
    assert "images float32 [batch, 8, 8, 1]" in export.describe_signature(tmp_path / "served")
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    pixels = np.round(X_TEST[:4] * 255).astype(np.uint8)
    want = model.predict(pixels / 255.0, verbose=0)
    out = loaded.signatures["serving_default"](images=tf.constant(pixels / 255.0, tf.float32))
    np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
    out = loaded.signatures["serving_bytes"](image_bytes=encoded)
    np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="give input_dtype"):
        clid_tf.export_saved_model(users.functional(), tmp_path / "other")


# ---------------------------------------------------------------- 6. Keras callbacks
class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("killed")


def test_backup_and_restore_resumes_to_the_uninterrupted_weights(tmp_path):
    """Killed after epoch 2 of 4, then fit again with the same BackupAndRestore: the
    backbone, the VRI meta-net (and its noise state), both optimizers and the stream's
    position come back; the final weights are an uninterrupted fit's to 1e-5."""

    def fit(model, *extra):
        return model.fit(X, Y, epochs=4, batch_size=64, meta_size=64, verbose=0,
                         callbacks=[clid_tf.WarmUp(1), *extra])

    straight = _meta_model("functional", "vri", seed=0)
    fit(straight)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="killed"):
        fit(_meta_model("functional", "vri", seed=0), backup, _Crash())
    resumed = _meta_model("functional", "vri", seed=5)  # other initial weights and noise
    fit(resumed, keras.callbacks.BackupAndRestore(str(tmp_path / "backup")))
    for a, b in zip(_weights(resumed) + [np.array(v) for v in resumed.meta_net.weights],
                    _weights(straight) + [np.array(v) for v in straight.meta_net.weights]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resumed.predict(X_TEST, verbose=0),
                               straight.predict(X_TEST, verbose=0), atol=1e-5)


def test_early_stopping_and_model_checkpoint_on_validation_metrics(tmp_path):
    model = _meta_model("functional")
    path = str(tmp_path / "best.keras")
    history = model.fit(
        X, Y, epochs=20, batch_size=64, meta_size=64, verbose=0, validation_split=0.2,
        callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=0, min_delta=10.0,
                                                 restore_best_weights=True),
                   keras.callbacks.ModelCheckpoint(path, monitor="val_accuracy",
                                                   save_best_only=True)])
    assert len(history.history["loss"]) == 2  # no 10-point improvement: stops at once
    best = keras.models.load_model(path)
    assert isinstance(best, clid_tf.MetaReweightModel)


def test_dividemix_callbacks_see_one_run_of_all_epochs():
    """One on_train_begin / on_train_end for the whole fit, every epoch's logs with its
    validation metrics in one History, and EarlyStopping stops DivideMix."""
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append("begin"),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch", epoch, "val_loss" in logs)),
        on_train_end=lambda logs: seen.append("end"))
    model = clid_tf.DivideMixModel([users.functional(0), users.functional(1)],
                                   warmup_epochs=1)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(X, Y, epochs=3, batch_size=64, verbose=0, validation_split=0.2,
                        callbacks=[probe])
    assert seen == ["begin", ("epoch", 0, True), ("epoch", 1, True), ("epoch", 2, True),
                    "end"]
    assert len(history.history["val_accuracy"]) == 3 and len(history.history["loss"]) == 3
    assert {"net1_loss", "net2_loss"} <= set(history.history)
    stopped = model.fit(X, Y, epochs=10, batch_size=64, verbose=0, validation_split=0.2,
                        callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=0,
                                                                 min_delta=10.0)])
    assert len(stopped.history["loss"]) == 2


# ---------------------------------------------------------------- 7. the other trainers
@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_dividemix_fits_a_users_models_on_arrays(kind):
    nets = [users.BUILDERS[kind](seed) for seed in (0, 1)]
    model = clid_tf.DivideMixModel(nets, [clid_tf.VRINet(seed=0), clid_tf.VRINet(seed=1)],
                                   warmup_epochs=1)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam", metrics=["accuracy"])
    before = [np.array(v) for v in model.meta_nets[1].trainable_variables]
    history = model.fit(X, Y, epochs=2, batch_size=64, meta_size=64, augment="weak",
                        verbose=0, validation_data=(X_TEST, CLEAN[:64])).history
    assert np.isfinite(history["net2_meta_clid"][-1]) and "val_accuracy" in history
    assert any(not np.array_equal(a, np.array(b)) for a, b in
               zip(before, model.meta_nets[1].trainable_variables))
    np.testing.assert_allclose(model.predict(X_TEST, verbose=0).sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="no sample_weight"):
        model.fit(X, Y, sample_weight=np.ones(len(X)))


def test_fixmatch_fits_labeled_and_unlabeled_arrays_in_their_pixel_range():
    model = clid_tf.FixMatchModel(users.functional(), clid_tf.WeightNet(normalize=False))
    model.compile(keras.optimizers.SGD(0.03, momentum=0.9, nesterov=True), "adam")
    data = tf.data.Dataset.from_tensor_slices((X[:100], Y[:100])).batch(20)
    history = model.fit(data, unlabeled=X[100:], epochs=2, steps_per_epoch=3,
                        batch_size=20, uratio=2, meta_size=40, verbose=0).history
    assert np.isfinite(history["meta_clid"][-1]) and len(history["loss"]) == 2
    flex = clid_tf.FixMatchModel(users.functional(), algorithm="flexmatch", num_unlabeled=10)
    flex.compile("sgd")
    _refused(flex, lambda: flex.fit(X[:100], Y[:100], unlabeled=X[100:], verbose=0),
             "num_unlabeled=500")
    _refused(flex, lambda: flex.fit(X[:100], Y[:100], verbose=0), "unlabeled=images")


def test_everything_the_readme_names_is_exported():
    import re  # pylint: disable=import-outside-toplevel
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        names = set(re.findall(r"clid_tf\.([A-Za-z_]+)", f.read()))
    modules = {"train", "audit"}  # entry points named in the README's commands
    missing = [n for n in sorted(names - modules) if not hasattr(clid_tf, n)]
    assert not missing, missing
