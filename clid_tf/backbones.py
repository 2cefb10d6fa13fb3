"""Classifiers that return (logits, penultimate features), with input standardisation.

Every classifier takes raw inputs (uint8-valued images [B, H, W, C] as float, or feature
vectors [B, D]) and standardises them inside the model, so training, evaluation and the
exported SavedModel share one input convention. The body after standardisation is one of
the small nets here or a paper backbone from `clid_tf.resnets`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np

from clid_tf import resnets

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="clid_tf")
class Standardize(keras.layers.Layer):
    """(x * scale - mean) / std with constant (non-variable) per-channel statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.scale = float(scale)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype) * self.scale
        mean = np.asarray(self.mean, dtype=self.compute_dtype)
        std = np.asarray(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "scale": self.scale}


def _conv_bn_relu(x, filters: int, name: str):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def small_cnn(num_classes: int, input_shape: Sequence[int]) -> keras.Model:
    """3-conv CNN for small images (digits 8x8): features [B, 128], logits [B, K]."""
    inputs = keras.Input(tuple(input_shape))
    x = _conv_bn_relu(inputs, 32, "block1")
    x = _conv_bn_relu(x, 64, "block2")
    # float32 max pooling: XLA has MaxPoolGradGrad (the meta step's second order) for
    # float32 only, so the whole step compiles in every precision; weightless, so exact.
    x = keras.layers.MaxPooling2D(2, dtype="float32", name="pool")(x)
    x = _conv_bn_relu(x, 128, "block3")
    # Pooling and the classifier run in float32 under a mixed-precision policy too.
    features = keras.layers.GlobalAveragePooling2D(dtype="float32", name="features")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    model = keras.Model(inputs, (logits, features), name="small_cnn")
    model.feature_dim = 128
    return model


def mlp(num_classes: int, input_shape: Sequence[int], width: int = 256) -> keras.Model:
    """Two hidden layers with BN and ReLU for flat features: features [B, width]."""
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i in (1, 2):
        x = keras.layers.Dense(width, use_bias=False, name=f"dense{i}")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                            name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    features = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    model = keras.Model(inputs, (logits, features), name="mlp")
    model.feature_dim = width
    return model


def _body_builders() -> dict[str, Callable[[int, Sequence[int]], keras.Model]]:
    builders = {"small_cnn": small_cnn, "mlp": mlp}
    for name, fn in resnets.BUILDERS.items():
        builders[name] = lambda k, shape, fn=fn: fn(k, input_shape=tuple(shape))
    return builders


BACKBONES = ("small_cnn", "mlp", *resnets.BUILDERS)


def build(name: str, *, num_classes: int, input_shape: Sequence[int],
          mean: Sequence[float], std: Sequence[float], seed: int | None = None,
          sync_batchnorm: bool = False, dtype_policy: str = "float32") -> keras.Model:
    """Raw input [B, *input_shape] -> (logits float32 [B, K], features float32 [B, d]).

    The model has `feature_dim` (d), `head`, the final Dense layer (used by the
    last-layer meta scope), and `block_names`, its residual blocks input to output (for
    the meta scope top:N, `resnets.block_variables`; empty for small_cnn and mlp).
    `sync_batchnorm` makes every BatchNormalization use the statistics of the global
    batch under a multi-replica strategy. `dtype_policy`
    ('mixed_float16', 'mixed_bfloat16') computes the body in float16 or bfloat16 with
    float32 variables; logits and features are float32 in every policy.

    Images (rank-3 input_shape) are scaled by 1/255 before standardisation, matching the
    [0, 1]-unit `mean`/`std` of `clid_tf.datasets`; flat features use `mean`/`std` as is.
    """
    builders = _body_builders()
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(builders)}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    is_image = len(input_shape) == 3
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        body = builders[name](num_classes, input_shape)
        inputs = keras.Input(tuple(input_shape), name="images")
        x = Standardize(mean, std, 1.0 / 255.0 if is_image else 1.0,
                        name="standardize")(inputs)
        logits, features = body(x)
        model = keras.Model(inputs, (logits, features), name=f"classifier_{name}")
    finally:
        keras.config.set_dtype_policy(previous)
    model.feature_dim = int(body.feature_dim)
    model.head = body.get_layer("logits")  # logits = features @ head.kernel + head.bias
    model.block_names = tuple(getattr(body, "block_names", ()))
    if sync_batchnorm:
        for layer in body._flatten_layers():  # pylint: disable=protected-access
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


# ---------------------------------------------------------------- a user's own Keras model
@keras.saving.register_keras_serializable(package="clid_tf")
class DenseLogits(keras.layers.Layer):
    """The logits of a Dense head without its activation: x @ kernel + bias.

    Wraps a classifier's final Dense layer (often softmax-activated, as in
    keras.applications) and shares its variables, so training updates the user's model.
    """

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense
        self.kernel = dense.kernel
        self.bias = dense.bias

    def call(self, features):
        logits = keras.ops.matmul(keras.ops.cast(features, self.dense.compute_dtype),
                                  self.dense.kernel)
        if self.dense.bias is not None:
            logits = logits + self.dense.bias
        return keras.ops.cast(logits, "float32")

    def get_config(self):
        return {**super().get_config(), "dense": keras.saving.serialize_keras_object(self.dense)}

    @classmethod
    def from_config(cls, config):
        dense = keras.saving.deserialize_keras_object(config.pop("dense"))
        return cls(dense, **config)

    def build(self, input_shape):
        if not self.dense.built:
            self.dense.build(input_shape)
            self.kernel, self.bias = self.dense.kernel, self.dense.bias
        self.built = True


def _producer(tensor):
    return tensor._keras_history.operation  # pylint: disable=protected-access


def _final_dense(model: keras.Model) -> keras.layers.Dense | None:
    """The Dense layer that produces the model's (single) output, skipping a trailing
    Activation/Softmax layer; None if the output is not a Dense layer's."""
    layer = _producer(model.outputs[0])
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        layer = _producer(layer.input)
    return layer if isinstance(layer, keras.layers.Dense) else None


def _head_of(logits) -> keras.layers.Dense | None:
    """The Dense layer whose output (or pre-activation, `DenseLogits`) is `logits`,
    looking into nested functional models (a `build` backbone's body); else None."""
    layer = _producer(logits)
    while isinstance(layer, keras.Model) and getattr(layer, "outputs", None):
        layer = _producer(layer.outputs[0])
    if isinstance(layer, DenseLogits):
        return layer.dense
    return layer if isinstance(layer, keras.layers.Dense) else None


def as_classifier(model: keras.Model) -> keras.Model:
    """A Keras model -> one that returns (logits [B, K], features [B, d]) with `.head`
    (the final Dense layer: logits = features @ head.kernel + head.bias) and `.feature_dim`.

    Accepted: a model that already returns (logits, features) (as `build` makes them); or a
    functional/Sequential classifier whose last layer is Dense (any activation, e.g.
    keras.applications with weights=None): its penultimate activations (the Dense layer's
    input) are tapped as features and the Dense layer's pre-activation output is used as
    logits. The returned model shares the user's layers and variables.

    Raises:
      ValueError: one line, for a model with neither form (no Dense head).
    """
    if hasattr(model, "feature_dim") and hasattr(model, "head"):
        return model
    outputs = getattr(model, "outputs", None)
    if outputs is None:
        raise ValueError(f"model {model.name!r} is not built (give it an Input or call it "
                         "once), or is a subclassed model; pass a functional or Sequential "
                         "classifier, or one that returns (logits, features)")
    if len(outputs) == 2:
        logits, features = outputs
        wrapped = keras.Model(_inputs(model), (logits, features), name=f"{model.name}_clid")
        wrapped.head = _head_of(logits)  # None: no last_layer meta scope (checked there)
        wrapped.feature_dim = int(features.shape[-1])
        wrapped.block_names = resnets.block_names_of(wrapped)
        return wrapped
    dense = _final_dense(model)
    if len(outputs) != 1 or dense is None:
        raise ValueError(f"model {model.name!r} has no Dense head: its output is not a Dense "
                         "layer's, so there are no logits and penultimate features to tap; "
                         "end it with keras.layers.Dense(num_classes), or return "
                         "(logits, features)")
    features = dense.input
    logits = DenseLogits(dense, name="logits_of_" + dense.name)(features)
    wrapped = keras.Model(_inputs(model), (logits, features), name=f"{model.name}_clid")
    wrapped.head = dense
    wrapped.feature_dim = int(features.shape[-1])
    return wrapped


def _inputs(model: keras.Model):
    """The model's input tensor, or its list when it has several."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs
