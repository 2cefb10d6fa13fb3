"""--trainer=vri_single: the single-network VRI-CE + CLID scheme of the Clothing1M and
Animal-10N scripts of the authors. Its virtual step through the real Adam / SGD
against the real update and finite differences (float64), the fresh-Adam slopes, the
optimizer reset, and CLI runs on image files in both layouts."""

import contextlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.runs import callbacks
from clid_tf.core import lookahead
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.metanets import vri
from tests.helpers import small_models as helpers
from tests.helpers.cli import run_cli
from tests.helpers.gradients import clid_surrogate, entrywise_check, meta_loss_at

# PyTorch's Adam epsilon, the authors' Clothing1M one
# (ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py:325)
EPS = 1e-8


def _dropout_classifier(seed=0):
    """x [B, 3] -> features = ReLU(BN(Dense 5)) -> Dropout-Dense(4)-ReLU -> Dense(3) logits:
    like VGG-19-BN, the feature feeds an MLP with (replica-consistent) dropout."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, name="dense1")(inputs)
    features = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    h = backbones.GlobalBatchDropout(0.3, seed=seed, name="dropout")(features)
    h = keras.layers.Dense(4, activation="relu", name="fc")(h)
    logits = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(inputs, (logits, features))
    model.feature_dim, model.head = 5, None
    return model


@contextlib.contextmanager
def _same_noise(meta_net):
    """Every VRI call inside draws the eps of the generator state at entry (so the
    hypergradient and its finite differences see the same rectifier samples)."""
    state = meta_net.noise.state.numpy()

    def reset():
        meta_net.noise.state.assign(state)

    yield reset
    reset()


def _real_optimizer(kind, variables, warm_steps):
    """The Clothing1M optimizer (Adam, eps 1e-8) or Animal-10N's (SGD heavy ball), after
    `warm_steps` real updates."""
    optimizer = (keras.optimizers.Adam(0.05, beta_1=0.9, beta_2=0.999, epsilon=EPS)
                 if kind == "adam" else keras.optimizers.SGD(0.5, momentum=0.9))
    optimizer.build(variables)
    rng = np.random.default_rng(3)
    for _ in range(warm_steps):
        optimizer.apply([tf.constant(rng.normal(size=v.shape) * 0.1) for v in variables],
                        variables)
    return optimizer


def _dense(gradient) -> np.ndarray:
    """A gradient as a dense array (the embedding's comes as IndexedSlices)."""
    return tf.convert_to_tensor(gradient).numpy()


# Clothing1M: Adam without weight decay, fresh (the first step, or every epoch's first with
# --reset_optimizer_each_epoch) and warm; Animal-10N: heavy-ball SGD with L2 1e-3.
SETTINGS = [("adam", 0, 0.0), ("adam", 3, 0.0), ("sgd", 3, 1e-3)]


@pytest.mark.parametrize("kind,warm_steps,weight_decay", SETTINGS)
def test_vri_hypergradient_through_the_real_optimizer_matches_central_differences(
        kind, warm_steps, weight_decay):
    """dCLID(theta'(phi))/dphi for the VRI rectifier, theta' = the real optimizer's next
    update, on a BN + dropout classifier: the 5 largest entries of phi's gradient, h = 1e-4,
    relative error <= 1e-4;
    the D-scaled routes give the same gradient."""
    with helpers.floatx("float64"):
        backbone = _dropout_classifier()
        meta_net = vri.VRINet(3, 5, embed_dim=4, hidden=(8, 8), kl_weight=0.0, seed=0)
        batch, meta_batch = helpers.batches(batch=8, meta=6)
        step = lookahead.OptimizerStep(_real_optimizer(kind, backbone.trainable_variables,
                                                       warm_steps),
                                       weight_decay=weight_decay)
        clid = objectives.meta_objective("clid", tau=0.5)
        with _same_noise(meta_net) as reset:
            results = {}
            for route in ("tape", "recompute", "jvp"):
                reset()
                results[route] = virtual.meta_gradients(
                    backbone, meta_net, batch, meta_batch, step=step, meta_objective=clid,
                    meta_grad=route)
            reset()
            objective, _ = clid_surrogate(backbone, meta_net, batch, meta_batch, step)
            grads = [_dense(g) for g in results["tape"].meta_grads]
            assert max(np.abs(g).max() for g in grads) > 1e-8

            def loss_at():
                reset()
                return meta_loss_at(backbone, meta_net, batch, meta_batch, step, objective)

            # Through a fresh Adam the hypergradient is tiny (its largest entries ~3e-7
            # here: D ~ lr eps'/(|g| + eps')^2), so the largest entries are
            # checked, with h = 1e-4 for the float64 differences to resolve them.
            entrywise_check(meta_net, grads, loss_at, h=1e-4, largest=True)
        for route in ("recompute", "jvp"):
            for a, b in zip(results[route].meta_grads, results["tape"].meta_grads):
                np.testing.assert_allclose(_dense(a), _dense(b), rtol=1e-8, atol=1e-14)


def test_adam_virtual_step_is_the_real_adam_update_of_the_vri_loss():
    """theta' of the virtual step = what the real Adam (eps 1e-8, fresh and warm) makes of
    the same VRI-rectified gradient; the optimizer's state is left as it was."""
    with helpers.floatx("float64"):
        backbone = _dropout_classifier()
        meta_net = vri.VRINet(3, 5, embed_dim=4, hidden=(8, 8), seed=0)
        batch, _ = helpers.batches(batch=8)
        variables = backbone.trainable_variables
        for warm_steps in (0, 3):
            optimizer = _real_optimizer("adam", variables, warm_steps)
            fwd = virtual.train_forward(backbone, batch["image"])
            dz, _ = virtual.logit_gradient(virtual.for_meta_net(meta_net, batch["label"]),
                                           fwd.logits, fwd.features)
            grads = virtual.backprop(fwd, dz)
            state = helpers.snapshot(optimizer.variables)
            ahead = lookahead.OptimizerStep(optimizer)(variables, fwd.theta, grads)
            twins = [keras.Variable(v.numpy()) for v in variables]
            twin = keras.optimizers.Adam(0.05, epsilon=EPS)
            twin.build(twins)
            for a, b in zip(twin.variables, optimizer.variables):
                a.assign(b)
            twin.apply(grads, twins)
            for got, want in zip(ahead.params, twins):
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13, atol=1e-15)
            for before, v in zip(state, optimizer.variables):
                np.testing.assert_array_equal(before, v.numpy())


def test_fresh_adam_slopes_favour_near_zero_gradients():
    """The fresh-Adam warning, in Keras' form: at a fresh state D = lr sqrt(1 - b2)
    eps / (s + eps)^2 (1 - b1) / (1 - b1) with s = sqrt(1 - b2) |g|, so the hypergradient
    of the first step after a reset weighs parameters with |g| ~ 0 millions of times more
    than those with |g| ~ 1e-2."""
    with helpers.floatx("float64"):
        variable = keras.Variable(np.zeros(4))
        optimizer = _real_optimizer("adam", [variable], 0)
        g = tf.constant([1e-2, 1e-5, 1e-9, 0.0], tf.float64)
        slopes = lookahead.OptimizerStep(optimizer)([variable], [variable.value], [g]).slopes
        d = slopes[0].numpy()
        b2 = float(np.float32(0.999))
        s = np.sqrt(1 - 0.999) * np.abs(g.numpy())
        alpha = 0.05 * np.sqrt(1 - b2) / (1 - float(np.float32(0.9)))
        np.testing.assert_allclose(d, alpha * (1 - 0.9) * EPS / (s + EPS) ** 2, rtol=1e-9)
        assert d[3] / d[0] > 1e6 and d[2] > 0.99 * d[3]


def test_reset_optimizer_makes_the_next_step_a_fresh_optimizers():
    """ResetOptimizer at an epoch start: iteration counter and slots zeroed, the lr kept, so
    the next real Adam step is the step a newly created Adam takes."""
    variables = [keras.Variable(np.linspace(-1, 1, 6).reshape(2, 3), dtype="float32")]
    optimizer = _real_optimizer("adam", variables, 4)
    model = type("Model", (), {"optimizer": optimizer})()
    reset = callbacks.ResetOptimizer()
    reset.set_model(model)
    reset.on_epoch_begin(1)
    assert int(optimizer.iterations) == 0 and float(optimizer.learning_rate) == pytest.approx(0.05)
    assert all(not np.any(v.numpy()) for v in optimizer.variables
               if v is not optimizer._learning_rate)
    fresh_vars = [keras.Variable(v.numpy()) for v in variables]
    fresh = keras.optimizers.Adam(0.05, epsilon=EPS)
    fresh.build(fresh_vars)
    g = [tf.constant([[0.3, -0.2, 0.1], [0.0, 0.5, -1.0]])]
    optimizer.apply(g, variables)
    fresh.apply(g, fresh_vars)
    np.testing.assert_array_equal(variables[0].numpy(), fresh_vars[0].numpy())


# ---------------------------------------------------------------- CLI runs on image files

def _jpeg(path, shape, seed):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, quality=95)
    return path


SMALL = ["--epochs=2", "--warmup_epochs=1", "--steps_per_epoch=3", "--verbose=0",
         "--trainer=vri_single", "--batch_size=8", "--meta_batch_size=6",
         "--eval_batch_size=16"]


def test_vri_single_trains_on_a_class_folder_tree(tmp_path):
    """A train/ and test/ tree of PNGs: the run's defaults are VRI and the real optimizer's
    virtual step; meta steps run after the warm-up with a finite CLID."""
    for split, per_class in (("train", 12), ("test", 4)):
        for c in "abc":
            for i in range(per_class):
                _jpeg(tmp_path / "data" / split / c / f"{i}.jpg", (16, 16, 3), 100 * i + ord(c))
    workdir = tmp_path / "run"
    proc = run_cli(f"--workdir={workdir}", f"--dataset=folder:{tmp_path / 'data'}",
                   "--meta_size=12", "--augment=flip", "--export=none", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["meta_net"] == "vri" and results["virtual_step"] == "optimizer"
    assert results["flags"]["trainer"] == "vri_single" and results["num_train"] == 36
    meta = results["history"]["meta_clid"]
    assert meta[0] is None and np.isfinite(meta[1])  # warm-up, then meta steps
    assert 0.0 <= results["final_test_accuracy"] <= 1.0
    assert "trainer vri_single, method clid, meta-net vri" in proc.stdout


@pytest.mark.slow  # covered by the trainer: test_vri_single_trains_on_a_class_folder_tree; the layout: flagfiles wiring
def test_vri_single_on_a_clothing1m_list_layout_with_audit_and_export(tmp_path):
    """Clothing1M's layout: images/D/DD/*.jpg of mixed sizes, noisy-train / clean-val /
    clean-test lists and the category names. Resize 20 + centre crop 16, a class-balanced
    subset, the meta set from the val list, Adam reset every epoch; then the in-sample
    audit, and the SavedModel's image-bytes endpoint decodes a raw file as training does."""
    root = tmp_path / "clothing"
    names = ["T-Shirt", "Shirt", "Down Coat"]
    lists = {}
    for split, per_class in (("noisy_train", 14), ("clean_val", 5), ("clean_test", 3)):
        lines = []
        for i in range(3 * per_class):
            rel = f"images/{i % 4}/{i % 40:02d}/{split}_{i}.jpg"
            _jpeg(root / rel, [(20, 26, 3), (28, 20, 3), (23, 31, 3)][i % 3], i)
            lines.append(f"{rel} {i % 3}")
        lists[split] = root / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    (root / "category_names_eng.txt").write_text("\n".join(names) + "\n")
    workdir = tmp_path / "run"
    proc = run_cli(
        f"--workdir={workdir}", f"--dataset=list:{lists['noisy_train']}",
        f"--val_list={lists['clean_val']}", f"--test_list={lists['clean_test']}",
        f"--class_names_file={root / 'category_names_eng.txt'}", "--image_size=16",
        "--resize_shorter=20", "--train_subset=30", "--meta_source=val", "--meta_size=12",
        "--optimizer=adam", "--lr=1e-3", "--weight_decay=0", "--lr_schedule=constant",
        "--reset_optimizer_each_epoch", "--augment=flip", "--meta_augment=none",
        "--export=selected", "--audit", "--audit_folds=0", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_train"] == 30 and results["num_meta"] == 12  # 10 per noisy class
    assert results["meta_split"] == "val" and results["class_names"] == names
    assert results["num_val"] == 15 and results["num_test"] == 9
    assert np.isfinite(results["history"]["meta_clid"][1])
    assert results["audit"]["num_train"] == 30 and (workdir / "audit.csv").exists()
    loaded = tf.saved_model.load(str(workdir / "saved_model"))
    raw = (root / "images/1/01/clean_test_1.jpg").read_bytes()  # 28 x 20, not 16 x 16
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant([raw]))
    from clid_tf.data.inputs import decode_image  # pylint: disable=import-outside-toplevel
    decoded = decode_image(tf.constant(raw), element_shape=(16, 16, 3),
                                   image_size=16, resize_shorter=20)
    by_pixels = loaded.signatures["serving_default"](images=decoded[None])
    np.testing.assert_allclose(by_bytes["probabilities"], by_pixels["probabilities"],
                               rtol=1e-6)
    assert os.path.isdir(workdir / "checkpoints")


def test_a_run_checkpoint_holds_every_variable_of_the_networks(tmp_path):
    """`callbacks.checkpoint_of`: VRINet's hidden layers (kept in a Python list) and its
    noise-generator state, and VGG-19-BN's dropout-mask states, which TensorFlow's object
    graph alone misses, are saved and restored (so a resumed run draws the same eps and
    masks and keeps the trained meta-net)."""
    meta_net = vri.VRINet(3, 5, seed=0)
    vgg = backbones.build("vgg19_bn", num_classes=3, input_shape=(32, 32, 3), seed=0,
                          mean=(0.5,) * 3, std=(0.2,) * 3)
    parts = {"backbone": vgg, "meta_net": meta_net}
    path = callbacks.checkpoint_of(parts).save(str(tmp_path / "ckpt"))
    saved = [v.numpy().copy() for part in parts.values() for v in part.variables]
    meta_net.sample_weights(tf.zeros([2, 3]), tf.zeros([2, 3]))  # advances the noise state
    for part in parts.values():
        for variable in part.variables:
            variable.assign(tf.zeros_like(variable) + tf.ones([], variable.dtype))
    plain = tf.train.Checkpoint(**parts)
    plain.restore(path).expect_partial()
    assert not np.array_equal(meta_net.hidden_layers[0].kernel.numpy(),
                              saved[len(vgg.variables) + 1])  # TF's graph alone misses it
    callbacks.checkpoint_of(parts).restore(path).assert_existing_objects_matched()
    restored = [v.numpy() for part in parts.values() for v in part.variables]
    for before, after in zip(saved, restored):
        np.testing.assert_array_equal(before, after)
