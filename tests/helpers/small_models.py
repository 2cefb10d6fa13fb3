"""Small models shared by tests: a float64 Dense-BN-ReLU-Dense classifier and batches."""

import contextlib

import keras
import numpy as np

from clid_tf.models import backbones
from clid_tf import metanets
from clid_tf.metanets import wnet
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import objectives


@contextlib.contextmanager
def floatx(dtype: str):
    """Temporarily sets Keras' default float type (float64 for finite differences)."""
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


def tiny_classifier(num_inputs=3, hidden=4, num_classes=3, seed=0) -> keras.Model:
    """x [B, num_inputs] -> (logits [B, K], features [B, hidden]) with one BatchNorm."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_inputs,))
    h = keras.layers.Dense(hidden, name="dense1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(h)
    features = keras.layers.ReLU()(h)
    logits = keras.layers.Dense(num_classes, name="dense2")(features)
    model = keras.Model(inputs, (logits, features))
    model.feature_dim = hidden
    return model


def weight_net(seed=0) -> wnet.WeightNet:
    net = wnet.WeightNet(hidden=8, seed=seed)
    net(np.zeros([1], keras.config.floatx()))
    return net


def batches(batch=6, meta=5, num_inputs=3, num_classes=3, seed=0, meta_labels=False):
    rng = np.random.default_rng(seed)
    dtype = keras.config.floatx()
    train = {"image": rng.normal(size=(batch, num_inputs)).astype(dtype),
             "label": rng.integers(0, num_classes, batch).astype(np.int32)}
    meta_batch = {"image": rng.normal(size=(meta, num_inputs)).astype(dtype)}
    if meta_labels:
        meta_batch["label"] = rng.integers(0, num_classes, meta).astype(np.int32)
    return train, meta_batch


def small_cnn_meta_model(policy: str, meta_grad: str = "tape", jit_compile: bool = False):
    """WNet + CLID on small_cnn (3 classes, 8x8x1) under a Keras dtype policy, compiled
    with SGD(0.05, momentum 0.9) and Adam(1e-3); returns (model, one step's data: 16
    uint8-range float32 images with labels, the first 8 as the meta batch)."""
    net = backbones.build("small_cnn", num_classes=3, input_shape=(8, 8, 1), mean=(0.3,),
                          std=(0.4,), seed=0, dtype_policy=policy)
    meta_net = metanets.build("wnet", num_classes=3, feature_dim=net.feature_dim,
                                         vri_kl=0.0, seed=0)
    model = meta_model.MetaReweightModel(
        net, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5),
        meta_grad=meta_grad)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3),
                  jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 1)).astype(np.float32)
    data = {"train": {"image": images, "label": rng.integers(0, 3, 16).astype(np.int32)},
            "meta": {"image": images[:8]}}
    return model, data


def snapshot(variables) -> list[np.ndarray]:
    """Copies of the variables' current values."""
    return [v.numpy().copy() for v in variables]


def array_stream(x, y, *, batch_size, seed=0, is_noisy=None, meta_x=None, meta_labels=None,
                 meta_batch_size=100, steps_per_epoch=None):
    """The fit stream of in-memory arrays, as the CLI builds it from a split (clid_tf.data.pipelines)."""
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    from clid_tf.data.inputs import ArrayInputs
    x = np.asarray(x)
    steps = steps_per_epoch or len(x) // batch_size
    fields = {"label": np.asarray(y).astype(np.int32)}
    if is_noisy is not None:
        fields["is_noisy"] = np.asarray(is_noisy, bool)
    train = data.epoch_batches(ArrayInputs(data.as_input_array(x)), np.arange(len(x)),
                               batch_size=batch_size, seed=seed, steps_per_epoch=steps,
                               fields=fields)
    if meta_x is None:
        return data.training_stream(train)
    meta_fields = {} if meta_labels is None else {
        "label": np.asarray(meta_labels).astype(np.int32)}
    meta = data.epoch_batches(ArrayInputs(data.as_input_array(meta_x)),
                              np.arange(len(meta_x)), batch_size=meta_batch_size,
                              seed=seed + 1, steps_per_epoch=steps, fields=meta_fields)
    return data.training_stream(train, meta)
