"""The whole train step compiles with XLA for every method and meta-net, traced once."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf import metanets
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import objectives
from tests.helpers import small_models as helpers


def _model(meta_net, objective, meta_grad="tape", scope="full"):
    keras.utils.set_random_seed(0)
    net = backbones.build("mlp", num_classes=3, input_shape=(4,), mean=(0.0,) * 4,
                          std=(1.0,) * 4, seed=0)
    if meta_net is None:
        model = meta_model.MetaReweightModel(net)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
        return model
    model = meta_model.MetaReweightModel(
        net, metanets.build(meta_net, num_classes=3, feature_dim=net.feature_dim,
                                       vri_kl=0.01, seed=0),
        meta_objective=objectives.meta_objective(objective, tau=0.5),
        meta_objective_name=objective, meta_grad=meta_grad, meta_scope=scope)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3),
                  jit_compile=True)
    return model


def _stream(labelled_meta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    meta = np.arange(16)
    return helpers.array_stream(x, y, batch_size=16, seed=0, is_noisy=np.zeros(64, bool),
                                meta_x=x[meta], meta_batch_size=8,
                                meta_labels=y[meta] if labelled_meta else None)


@pytest.mark.parametrize("meta_net,objective,meta_grad,scope", [
    (None, None, "tape", "full"),
    ("wnet", "clid", "tape", "full"),
    ("wnet", "clid", "jvp", "full"),
    ("wnet", "clid", "recompute", "full"),
    ("wnet", "clid", "tape", "last_layer"),
    ("wnet", "ce_clean", "tape", "full"),
    ("vri", "clid", "tape", "full"),
    ("vri", "mae", "tape", "full"),
])
def test_xla_train_step_traces_once_and_trains(meta_net, objective, meta_grad, scope):
    model = _model(meta_net, objective, meta_grad, scope)
    theta0 = helpers.snapshot(model.backbone.trainable_variables)
    history = model.fit(_stream(objective in ("ce_clean", "mae")), steps_per_epoch=3,
                        epochs=2, verbose=0, shuffle=False)
    assert model.trace_count == 1  # 6 steps, one trace, no retracing
    assert all(np.isfinite(v) for values in history.history.values() for v in values)
    assert any(not np.allclose(a, v.numpy())
               for a, v in zip(theta0, model.backbone.trainable_variables))
    if meta_net is not None:
        assert np.isfinite(history.history[f"meta_{objective}"][-1])


def test_xla_step_equals_graph_step():
    batch_x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    data_ = {"train": {"image": batch_x, "label": (batch_x[:, 0] > 0).astype(np.int32)},
             "meta": {"image": batch_x[:8]}}
    states = []
    for jit in (False, True):
        model = _model("wnet", "clid")
        tf.function(model.train_step, jit_compile=jit)(data_)
        states.append([v.numpy() for v in model.backbone.trainable_variables
                       + model.meta_net.trainable_variables])
    for a, b in zip(*states):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mixed_bfloat16_keeps_losses_clid_and_meta_net_in_float32():
    keras.utils.set_random_seed(0)
    model, data_ = helpers.small_cnn_meta_model("mixed_bfloat16")
    net, meta_net = model.backbone, model.meta_net
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert net.get_layer("small_cnn").get_layer("block1_conv").compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in net.trainable_variables)
    logits, features = net(data_["train"]["image"], training=False)
    assert logits.dtype == "float32" and features.dtype == "float32"
    phi0 = helpers.snapshot(meta_net.trainable_variables)
    logs = tf.function(model.train_step)(data_)
    assert np.isfinite(float(logs["meta_clid"])) and np.isfinite(float(logs["loss"]))
    assert all(v.dtype == "float32" for v in meta_net.trainable_variables)
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(phi0, meta_net.trainable_variables))


def test_xla_meta_step_of_the_cnn_compiles_in_float16_with_loss_scaling():
    """The second-order step through max pooling needs MaxPoolGradGrad, which XLA has for
    float32 only: small_cnn pools in float32 so that 16-bit policies compile (the same
    layer serves mixed_bfloat16), and the loss-scaled step compiles with its conds."""
    keras.utils.set_random_seed(0)
    model, data_ = helpers.small_cnn_meta_model("mixed_float16", jit_compile=True)
    history = model.fit(tf.data.Dataset.from_tensors(data_).repeat(), steps_per_epoch=3,
                        epochs=1, verbose=0, shuffle=False)
    assert model.trace_count == 1
    assert np.isfinite(history.history["meta_clid"]).all()
    assert history.history["loss_scale"] == [2.0**15]  # no overflow in 3 steps
