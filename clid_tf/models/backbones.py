"""Classifiers that return (logits, penultimate features), with input standardisation.

Every classifier takes raw inputs (uint8-valued images [B, H, W, C] as float, or feature
vectors [B, D]) and standardises them inside the model, so training, evaluation and the
exported SavedModel share one input convention. The body after standardisation is one of the
small nets here, a paper backbone from `clid_tf.models.resnets`, or one of the real-world
sets' backbones of the authors' scripts (ruofanhu/CLID-MU@5cd0608: sota/vgg.py,
sota/resnet50.py): VGG-19-BN (Animal-10N; its CLID/VRI feature is the pooled conv feature
before the two 512-unit layers) and keras.applications' ResNet-50 (Clothing1M, optionally
with its ImageNet weights).
"""

from __future__ import annotations

from typing import Callable, Sequence

import math

import keras
import numpy as np
import tensorflow as tf

from clid_tf import names
from clid_tf.core import distribute
from clid_tf.models import resnets

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5
# torchvision's ImageNet statistics ([0, 1] units), for --standardize=imagenet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications' ResNet-50 ImageNet weights expect 'caffe' inputs: BGR pixels minus
# the ImageNet channel means, unscaled. `resnet50` flips conv1's kernel over its input
# channels when it loads them, so the model takes RGB, standardised as x - 255 * mean.
CAFFE_MEAN = (123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0)
CAFFE_STD = (1.0 / 255.0,) * 3


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


# Conv blocks: a channel count is a 3x3 conv-BN-ReLU block, "M" a 2x2 max pool.
SMALL_CNN_LAYOUT = (32, 64, "M", 128)
POOLED_CNN_LAYOUT = (32, "M", 64, "M", 128)


def _conv_net(num_classes: int, input_shape: Sequence[int], layout: Sequence,
              name: str) -> keras.Model:
    """Conv-BN-ReLU blocks `block<i>` and max pools as `layout` says, then global average
    pooling: features [B, last block's channels], logits [B, K]. The blocks are the
    model's `block_names`, so the meta scope top:N steps the head and the last N of them."""
    inputs = keras.Input(tuple(input_shape))
    x, blocks, pools = inputs, [], 0
    for item in layout:
        if item == "M":
            # float32 max pooling: XLA has MaxPoolGradGrad (the meta step's second order)
            # for float32 only, so the whole step compiles in every precision; weightless.
            pools += 1
            x = keras.layers.MaxPooling2D(2, dtype="float32", name=f"pool{pools}")(x)
            continue
        blocks.append(f"block{len(blocks) + 1}")
        x = _conv_bn_relu(x, int(item), blocks[-1])
    # Pooling and the classifier run in float32 under a mixed-precision policy too.
    features = keras.layers.GlobalAveragePooling2D(dtype="float32", name="features")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    model = keras.Model(inputs, (logits, features), name=name)
    model.feature_dim = int(features.shape[-1])
    model.block_names = tuple(blocks)
    return model


def small_cnn(num_classes: int, input_shape: Sequence[int]) -> keras.Model:
    """3-conv CNN for tiny images (digits 8x8): two blocks at full resolution, a 2x2 pool,
    a third block; features [B, 128], logits [B, K]."""
    return _conv_net(num_classes, input_shape, SMALL_CNN_LAYOUT, "small_cnn")


def pooled_cnn(num_classes: int, input_shape: Sequence[int]) -> keras.Model:
    """small_cnn's three blocks with a 2x2 max pool after each of the first two, for
    28x28 images (Fashion-MNIST, MNIST): the 64- and 128-channel convolutions run at 1/4
    and 1/16 of the input's pixels, a quarter of small_cnn's multiply-adds (7.4M against
    29M per 28x28 image); features [B, 128], logits [B, K]."""
    return _conv_net(num_classes, input_shape, POOLED_CNN_LAYOUT, "pooled_cnn")


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


@keras.saving.register_keras_serializable(package="clid_tf")
class GlobalBatchDropout(keras.layers.Layer):
    """Dropout whose mask is drawn for the global batch: [R*B, ...] from the generator state
    every replica shares, each replica keeping its rows (`distribute.replica_rows`), so a
    sample gets the same mask under a multi-replica strategy as on one device (Keras'
    Dropout draws per replica). Inverted dropout: kept units are scaled by 1 / (1 - rate).
    The generator state is a non-trainable variable of the model, so a `stateless_call`
    returns it advanced and a checkpoint holds it (exact resume).
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        rows = tf.shape(inputs)[0] * distribute.num_replicas()
        draw = keras.random.uniform((rows, *inputs.shape[1:]), seed=self.seed_generator,
                                    dtype="float32")
        keep = distribute.replica_rows(draw) >= self.rate
        return tf.where(keep, inputs / tf.cast(1.0 - self.rate, inputs.dtype),
                        tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# torchvision's vgg19_bn feature layout: 3x3 convolutions (channels) and 2x2 max pools (M).
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _torch_dense(units: int, fan_in: int, activation: str | None, name: str,
                 dtype=None) -> keras.layers.Dense:
    """Dense with PyTorch nn.Linear's default init: U(+-1/sqrt(fan_in)), kernel and bias."""
    init = keras.initializers.RandomUniform(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
    return keras.layers.Dense(units, activation=activation, kernel_initializer=init,
                              bias_initializer=init, name=name, dtype=dtype)


def vgg19_bn(num_classes: int, input_shape: Sequence[int], *, dropout: float = 0.5,
             width: int = 512) -> keras.Model:
    """VGG-19 with BatchNorm (the authors' Animal-10N backbone: ruofanhu/CLID-MU@5cd0608,
    sota/vgg.py: vgg19bn()):
    16 conv-BN-ReLU layers with 5 max pools, features = their global average pool [B, 512],
    then Dropout-Dense(512)-ReLU-Dropout-Dense(512)-ReLU-Dense(K) on them.

    The CLID/VRI feature is the pooled conv feature, not the last hidden layer,
    so the logits are not a Dense layer of the features: `head` is None (the last_layer
    meta scope is refused) and no blocks are named (top:N is refused). Conv
    kernels are He-normal over the fan-out with zero biases (VGG.__init__ in that file), the
    Dense layers PyTorch's default. Images need at least 32 x 32 pixels (5 halvings).
    """
    height, width_px = (int(d) for d in input_shape[:2])
    if min(height, width_px) < 32:
        raise ValueError(f"vgg19_bn halves its input 5 times and needs images of at least "
                         f"32x32 pixels, got {height}x{width_px} (--image_size)")
    inputs = keras.Input(tuple(input_shape))
    x, convs, pools = inputs, 0, 0
    for channels in VGG19_LAYOUT:
        if channels == "M":
            pools += 1  # float32: XLA has MaxPoolGradGrad for float32 only (see small_cnn)
            x = keras.layers.MaxPooling2D(2, dtype="float32", name=f"pool{pools}")(x)
            continue
        convs += 1
        x = keras.layers.Conv2D(
            channels, 3, padding="same", name=f"conv{convs}", bias_initializer="zeros",
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="untruncated_normal"))(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                            name=f"bn{convs}")(x)
        x = keras.layers.ReLU(name=f"relu{convs}")(x)
    features = keras.layers.GlobalAveragePooling2D(dtype="float32", name="features")(x)
    x, fan_in = features, 512
    for i in (1, 2):
        x = GlobalBatchDropout(dropout, name=f"dropout{i}")(x)
        x = _torch_dense(width, fan_in, "relu", f"fc{i}")(x)
        fan_in = width
    logits = _torch_dense(num_classes, width, None, "logits", dtype="float32")(x)
    model = keras.Model(inputs, (logits, features), name="vgg19_bn")
    model.feature_dim = 512
    model.head = None  # the logits are an MLP of the features, not one Dense layer
    return model


# keras.applications.ResNet50's residual blocks, input to output (layers conv<s>_block<b>_*).
RESNET50_BLOCKS = tuple(f"conv{stage}_block{block}" for stage, blocks in
                        ((2, 3), (3, 4), (4, 6), (5, 3)) for block in range(1, blocks + 1))


def resnet50(num_classes: int, input_shape: Sequence[int], *,
             weights: str | None = None) -> keras.Model:
    """keras.applications.ResNet50 (bottleneck ResNet-50, the authors' Clothing1M backbone:
    ruofanhu/CLID-MU@5cd0608, sota/resnet50.py: resnet50_pre()):
    features = the global average pool [B, 2048] before the Dense(K) head.

    `weights`: keras.applications' notop ImageNet weights file
    (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or 'imagenet' for Keras'
    download), or None for a random init. Loaded weights expect 'caffe' inputs (BGR minus
    the channel means): conv1's kernel is flipped over its input channels so that the model
    takes RGB, and `build` standardises with CAFFE_MEAN / CAFFE_STD. BatchNorm uses PyTorch's momentum
    (0.1, Keras 0.9; resnet50_pre() fine-tunes torchvision's ResNet-50) and keeps Keras'
    epsilon 1.001e-5, with which the weights were trained. Blocks are named for top:N.
    """
    inputs = keras.Input(tuple(input_shape))
    base = keras.applications.ResNet50(include_top=False, weights=weights,
                                       input_tensor=inputs, pooling="avg")
    if weights is not None:
        kernel = base.get_layer("conv1_conv").kernel
        kernel.assign(kernel.value[:, :, ::-1, :])  # BGR -> RGB input channels
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    features = keras.layers.Activation("linear", dtype="float32", name="features")(
        base.output)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    model = keras.Model(inputs, (logits, features), name="resnet50")
    model.feature_dim = 2048
    model.block_names = RESNET50_BLOCKS
    model.stem_prefixes = ("conv1_",)
    return model


def _body_builders() -> dict[str, Callable[[int, Sequence[int]], keras.Model]]:
    builders = {"small_cnn": small_cnn, "pooled_cnn": pooled_cnn, "mlp": mlp}
    for name, fn in resnets.BUILDERS.items():
        builders[name] = lambda k, shape, fn=fn: fn(k, input_shape=tuple(shape))
    builders.update(vgg19_bn=vgg19_bn, resnet50=resnet50)
    return builders


BACKBONES = names.BACKBONES  # the order of --help; `_body_builders` has every one
# Backbones that can start from pretrained weights: name -> the input standardisation
# (mean, std) those weights expect, which replaces the data's.
PRETRAINED_INPUT = {"resnet50": (CAFFE_MEAN, CAFFE_STD)}


def build(name: str, *, num_classes: int, input_shape: Sequence[int],
          mean: Sequence[float], std: Sequence[float], seed: int | None = None,
          sync_batchnorm: bool = False, dtype_policy: str = "float32",
          pretrained: str | None = None) -> keras.Model:
    """Raw input [B, *input_shape] -> (logits float32 [B, K], features float32 [B, d]).

    The model has `feature_dim` (d), `head`, the final Dense layer with logits =
    features @ head.kernel + head.bias (used by the last-layer meta scope; None for
    vgg19_bn, whose logits are an MLP of its features), and `block_names`, its residual
    or conv blocks input to output (for the meta scope top:N,
    `meta_scope.block_variables`; empty for mlp and vgg19_bn).
    `sync_batchnorm` makes every BatchNormalization use the statistics of the global
    batch under a multi-replica strategy. `dtype_policy`
    ('mixed_float16', 'mixed_bfloat16') computes the body in float16 or bfloat16 with
    float32 variables; logits and features are float32 in every policy.

    Images (rank-3 input_shape) are scaled by 1/255 before standardisation, matching the
    [0, 1]-unit `mean`/`std` of `clid_tf.data.datasets`; flat features use `mean`/`std` as is.
    `pretrained`: a weights file for the body (resnet50 only, `PRETRAINED_INPUT`); the
    standardisation is then the one those weights expect, not `mean`/`std`.
    """
    builders = _body_builders()
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(builders)}")
    if pretrained is not None:
        if name not in PRETRAINED_INPUT:
            raise ValueError(f"pretrained weights load into {', '.join(PRETRAINED_INPUT)} "
                             f"only, not {name}")
        if tuple(input_shape)[-1:] != (3,):
            raise ValueError(f"pretrained {name} weights need RGB images, got input shape "
                             f"{tuple(input_shape)}")
        mean, std = PRETRAINED_INPUT[name]
    if seed is not None:
        keras.utils.set_random_seed(seed)
    is_image = len(input_shape) == 3
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        body = (resnet50(num_classes, input_shape, weights=pretrained) if pretrained
                else builders[name](num_classes, input_shape))
        inputs = keras.Input(tuple(input_shape), name="images")
        x = Standardize(mean, std, 1.0 / 255.0 if is_image else 1.0,
                        name="standardize")(inputs)
        logits, features = body(x)
        model = keras.Model(inputs, (logits, features), name=f"classifier_{name}")
    finally:
        keras.config.set_dtype_policy(previous)
    model.feature_dim = int(body.feature_dim)
    # logits = features @ head.kernel + head.bias, unless the body says otherwise (None)
    model.head = body.head if hasattr(body, "head") else body.get_layer("logits")
    model.block_names = tuple(getattr(body, "block_names", ()))
    if hasattr(body, "stem_prefixes"):
        model.stem_prefixes = tuple(body.stem_prefixes)
    if sync_batchnorm:
        for layer in body._flatten_layers():  # pylint: disable=protected-access
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model
