"""A user's own Keras classifier as the trainers need it: (logits, features).

The trainers read two things from a classifier: the logits z [B, K] (pre-activation) and
the penultimate features h [B, d] that CLID compares. `as_classifier` gets both from

- a model that already returns (logits, features) (`models.backbones.build` makes those);
- a functional or Sequential classifier whose output is a Dense layer's (any activation,
  a trailing Activation/Softmax layer allowed): a new functional model over the same
  layers returns that Dense layer's pre-activation output (`DenseLogits`) and its input;
- a subclassed classifier (called once, so it is built) whose last Dense layer is its
  head: `TappedClassifier` runs it and taps that layer's input, checked at wrapping time
  against the model's own output.

The wrapped model shares the user's layers and variables, so training updates the user's
model. It records the user's output activation (`output_activation`, a Keras activation
name: 'softmax', 'linear', ...) so that the trainers' `predict` returns what the user's
model returns.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from clid_tf.models import resnets


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
        return _logits(self.dense, features)

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


def _logits(dense: keras.layers.Dense, features) -> tf.Tensor:
    """features [B, d] @ kernel + bias in the layer's compute dtype, as float32 [B, K]."""
    logits = keras.ops.matmul(keras.ops.cast(features, dense.compute_dtype), dense.kernel)
    if dense.bias is not None:
        logits = logits + dense.bias
    return keras.ops.cast(logits, "float32")


@keras.saving.register_keras_serializable(package="clid_tf")
class TappedClassifier(keras.Model):
    """A subclassed classifier as images -> (logits [B, K], features [B, d]).

    `head` is the model's last Dense layer (in the order Keras tracks its layers); while
    the wrapper runs the model, that layer's call records its input (the features), and
    the logits are features @ kernel + bias. A model whose call already returns (logits,
    features) passes through (`returns_pair`, `head` None). Use `as_classifier`, which
    checks on a probe batch that the model's output is indeed head.activation(logits).
    """

    def __init__(self, model: keras.Model, *, returns_pair: bool = False,
                 feature_dim: int | None = None, num_classes: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = model
        self.returns_pair = bool(returns_pair)
        if self.returns_pair:
            self.head, self.feature_dim = None, int(feature_dim)
            self.num_classes = int(num_classes)
            self.output_activation = "linear"
            return
        self.head = _last_dense(model)
        if self.head is None:
            raise ValueError(f"model {model.name!r} has no Dense layer to take logits and "
                             "features from; end it with keras.layers.Dense(num_classes), "
                             "or make its call return (logits, features)")
        self.feature_dim = int(self.head.kernel.shape[0])
        self.num_classes = int(self.head.units)
        self.output_activation = keras.activations.serialize(self.head.activation)

    def call(self, images, training=False):
        if self.returns_pair:
            logits, features = self.classifier(images, training=training)
            return keras.ops.cast(logits, "float32"), features
        captured = []
        head, run = self.head, self.head.call

        def tapped(inputs, *args, **kwargs):
            captured.append(inputs)
            return run(inputs, *args, **kwargs)

        head.call = tapped
        try:
            self.classifier(images, training=training)
        finally:
            del head.call  # the class's own call again
        features = captured[-1]
        return _logits(head, features), features

    def get_config(self):
        return {"model": keras.saving.serialize_keras_object(self.classifier),
                "returns_pair": self.returns_pair,
                "feature_dim": self.feature_dim if self.returns_pair else None,
                "num_classes": self.num_classes if self.returns_pair else None,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("model")), **config)


def as_classifier(model: keras.Model) -> keras.Model:
    """A Keras model -> one that returns (logits [B, K], features [B, d]) with `.head`
    (the final Dense layer: logits = features @ head.kernel + head.bias, or None),
    `.feature_dim` and `.output_activation` (module docstring for what is accepted).

    Raises:
      ValueError: one line, for a model with none of the accepted forms.
    """
    if isinstance(model, type):
        raise ValueError(f"pass a built model instance, not the class {model.__name__}")
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    if hasattr(model, "feature_dim") and hasattr(model, "head"):
        if not hasattr(model, "output_activation"):
            model.output_activation = "linear"
        return model
    outputs = _functional_outputs(model)
    if outputs is None:
        return _tapped(model)
    if len(outputs) == 2:
        logits, features = outputs
        wrapped = keras.Model(_inputs(model), (logits, features), name=f"{model.name}_clid")
        wrapped.head = _head_of(logits, features)  # None: no last_layer meta scope
        wrapped.feature_dim = int(features.shape[-1])
        wrapped.block_names = resnets.block_names_of(wrapped)
        wrapped.output_activation = "linear"
        return wrapped
    dense, activation = _final_dense(model)
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
    wrapped.output_activation = activation
    return wrapped


def num_classes_of(classifier: keras.Model) -> int:
    """K of a classifier `as_classifier` made (or `backbones.build`)."""
    known = getattr(classifier, "num_classes", None)
    return int(known) if known else int(classifier.outputs[0].shape[-1])


def _functional_outputs(model: keras.Model):
    """The symbolic outputs of a functional or Sequential model; None for a subclassed
    one. ValueError for a Sequential model without an input shape that was never built."""
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it a keras.Input(shape) "
                         "first, or call it once on a batch")
    try:
        return model.outputs
    except (AttributeError, ValueError):
        return None


def _tapped(model: keras.Model) -> keras.Model:
    """A subclassed model wrapped: passed through when it returns (logits, features),
    else tapped after checking on a probe batch that its output is its last Dense layer's output
    (activated) on the tapped features."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if not model.built or shape is None:
        raise ValueError(f"model {model.name!r} is a subclassed model that was never called: "
                         "call it once on a batch so that it is built, then pass it")
    probe, output = _probe(model, shape)
    if isinstance(output, (tuple, list)) and len(output) == 2:  # (logits, features)
        wrapped = TappedClassifier(model, returns_pair=True,
                                   feature_dim=int(output[1].shape[-1]),
                                   num_classes=int(output[0].shape[-1]),
                                   name=f"{model.name}_clid")
        wrapped(probe)  # built, as the trainers' stateless calls need
        return wrapped
    wrapped = TappedClassifier(model, name=f"{model.name}_clid")
    logits, _ = wrapped(probe)
    got = keras.ops.convert_to_numpy(output)
    want = keras.ops.convert_to_numpy(keras.activations.get(wrapped.output_activation)(logits))
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-5):
        raise ValueError(f"model {model.name!r}: its output is not its last Dense layer "
                         f"({wrapped.head.name}) applied to that layer's input, so logits and "
                         "features cannot be tapped; make its call return (logits, features)")
    return wrapped


def _probe(model: keras.Model, shape) -> tuple[tf.Tensor, Any]:
    """(a batch of 2 the subclassed model takes, its output): uniform floats, else zeros
    as token ids, else empty strings, the first it accepts."""
    probes = (tf.random.stateless_uniform([2, *shape[1:]], seed=[0, 0], dtype=tf.float32),
              tf.zeros([2, *shape[1:]], tf.int32), tf.fill([2, *shape[1:]], ""))
    for probe in probes:
        try:
            return probe, model(probe)
        except Exception:  # pylint: disable=broad-except  # the next dtype may fit
            continue
    raise ValueError(f"model {model.name!r}: calling it on a batch of floats, token ids or "
                     "strings of its built shape fails, so its logits and features cannot be "
                     "found; make it a functional model, or its call return (logits, features)")


def _last_dense(model: keras.Model) -> keras.layers.Dense | None:
    layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    return dense[-1] if dense else None


def _producer(tensor):
    return tensor._keras_history.operation  # pylint: disable=protected-access


def _final_dense(model: keras.Model) -> tuple[keras.layers.Dense | None, str]:
    """(the Dense layer that produces the model's single output, skipping a trailing
    Activation/Softmax layer, or None; the output's activation name)."""
    layer = _producer(model.outputs[0])
    trailing = None
    if isinstance(layer, keras.layers.Softmax):
        trailing, layer = "softmax", _producer(layer.input)
    elif isinstance(layer, keras.layers.Activation):
        trailing, layer = keras.activations.serialize(layer.activation), _producer(layer.input)
    if not isinstance(layer, keras.layers.Dense):
        return None, "linear"
    own = keras.activations.serialize(layer.activation)
    if trailing is None:
        return layer, own
    if own != "linear":  # two activations in a row: no single one to apply to the logits
        return None, "linear"
    return layer, trailing


def _output_layer(tensor, index: int):
    """The layer that makes `tensor`, looking into nested functional models (a `build`
    backbone's body) through their output `index`."""
    layer = _producer(tensor)
    while isinstance(layer, keras.Model) and getattr(layer, "outputs", None):
        layer = _producer(layer.outputs[index])
    return layer


def _head_of(logits, features) -> keras.layers.Dense | None:
    """The Dense layer whose output (or pre-activation, `DenseLogits`) is `logits` and
    whose input is `features`; else None (e.g. vgg19_bn, whose features feed an MLP)."""
    layer = _output_layer(logits, 0)
    fed = layer  # the layer whose input must be the features
    if isinstance(layer, DenseLogits):  # (its inner Dense is never called itself)
        layer = layer.dense
    if not isinstance(layer, keras.layers.Dense):
        return None
    return layer if _producer(fed.input) is _output_layer(features, 1) else None


def _inputs(model: keras.Model):
    """The model's inputs in the structure it was built with: one tensor, or a list or a
    dict of them (so that the wrapper takes what the model takes). A Sequential model
    that was never called has only its list of Inputs."""
    try:
        return model.input
    except AttributeError:
        return model.inputs[0] if len(model.inputs) == 1 else model.inputs
