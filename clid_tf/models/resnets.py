"""The paper's CIFAR backbones as Keras 3 functional models.

Every builder returns a `keras.Model` that maps an already standardised float32 image
batch [B, H, W, C] to the tuple `(logits [B, K] float32, features [B, d] float32)`, where
`features` are the global-average-pooled penultimate activations feeding the final Dense
layer (the "last hidden layer" that CLID uses) and `model.feature_dim == d`.

| name              | architecture                                        | d   | params K=10 |
|-------------------|-----------------------------------------------------|-----|-------------|
| `resnet32`        | He et al. 2016 CIFAR ResNet, 3x5 BasicBlocks        | 64  | 0.46M       |
|                   | 16/32/64, option-A (parameter-free) shortcuts       |     |             |
| `preact_resnet18` | PreActBlock [2,2,2,2], 64..512 (DivideMix style)    | 512 | 11.17M      |
| `resnet34`        | BasicBlock [3,4,6,3], 3x3 stem, no maxpool          | 512 | 21.28M      |
| `wrn28_10`        | WideResNet-28-10 (pre-activation, final BN-ReLU)    | 640 | 36.48M      |
| `wrn28_2`         | WideResNet-28-2                                     | 128 | 1.47M       |
| `wrn28_2_fork`    | WRN-28-2 of the CLID-MU authors' USB fork          | 128 | 1.47M       |

Architectural choices, following the PyTorch code the method was run with:

- PreAct-ResNet-18 (ruofanhu/CLID-MU@5cd0608, PreResNet.py: ResNet18()): stem conv3x3 ->
  BN -> ReLU; each block computes a = ReLU(BN1(x)), out = conv2(ReLU(BN2(conv1(a)))) +
  shortcut(a), where the shortcut is the identity on `a` (the pre-activated input) or a
  bias-free 1x1 conv of `a`. There is no BN/ReLU after the last block, so the pooled
  features can be negative.
- ResNet-34 (ruofanhu/CLID-MU@5cd0608, PreResNet.py: ResNet34()): stem conv3x3 -> BN ->
  ReLU; BasicBlock ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)) with a 1x1 conv + BN
  projection shortcut where the shape changes. ReLU-terminated.
- WRN (Zagoruyko & Komodakis; the Meta-Weight-Net / xternalz implementation, dropout 0):
  stem conv3x3 16; three groups of (depth-4)/6 pre-activation blocks with widths
  16k/32k/64k; the 1x1 projection shortcut (no BN) is applied to the pre-activated input
  when the width changes, the identity shortcut to the raw input otherwise; final BN ->
  ReLU before pooling.
- WRN-28-2 of the CLID-MU fork of USB (`wrn28_2_fork`, the semi-supervised trainers'
  backbone; ruofanhu/CLID-MU@5cd0608, semi/semilearn/nets/wrn/wrn.py): the same widths and
  block layout, but LeakyReLU(0.1), convolutions with bias (PyTorch's default bias init),
  BatchNormalization with PyTorch momentum 0.001 (Keras 0.999) and eps 1e-3, dropout 0.3
  between the two convolutions of every block. Every block pre-activates: the first block
  of each group (whose width changes) feeds LeakyReLU(BN(x)) to conv1 and to the 1x1
  shortcut, as its `if not self.equalInOut: x = self.relu1(self.bn1(x))` does (the fork
  dropped USB's `activate_before_residual` condition there, so no block uses the raw
  input). Convs kaiming-normal fan-out, head xavier-normal with zero bias; `features` are
  the pooled LeakyReLU(BN(x)), slightly negative at times. Its unused network level `bn2`
  (WideResNet.__init__) is not built.
- ResNet-32 (He et al. 2016, section 4.2; Meta-Weight-Net / akamaster implementation):
  option-A shortcuts, i.e. x[:, ::2, ::2] zero-padded with out/4 channels on each side,
  so the shortcut has no parameters (464,154 trainable parameters for K=10).

Common details:
- BatchNormalization(momentum=0.9, epsilon=1e-5) == PyTorch BatchNorm2d defaults (not
  in `wrn28_2_fork`). (Keras
  updates the moving variance with the biased batch variance, PyTorch with the unbiased.)
- Convolutions have no bias (all are followed by BN; `wrn28_2_fork`'s have one). Stride-2 3x3 convs pad 1 pixel on
  every side (ZeroPadding2D + 'valid') to match PyTorch's `padding=1`; Keras' 'same' would
  pad only bottom/right and sample the other pixel of each 2x2 cell.
- Initialisation mirrors each original above: PyTorch default (kaiming-uniform, a=sqrt(5)) for
  PreAct-ResNet-18 / ResNet-34 convs and every Dense kernel; kaiming-normal fan-in for
  ResNet-32 convs and Dense kernel; kaiming-normal fan-out for WRN convs and a zero WRN
  Dense bias. BN starts at gamma=1, beta=0.
- Global average pooling (not a fixed 4x4/8x8 pool; identical for 32x32 inputs), so any
  input size works. The pooling and the final Dense run in float32 even under a mixed
  precision policy, so logits and features are float32.
- The models only use keras.layers (plus one parameter-free Layer subclass for the
  option-A shortcut), so `model.stateless_call(trainable, non_trainable, x, training=True)`
  runs them with substituted weights and returns updated BN moving statistics.
- Residual blocks: `model.block_names` lists the blocks in input-to-output order (their
  layers are named `<block>_...`, the stem's `stem_...`); `block_variables(model)` gives
  each block's trainable variables, for the meta scope `top:N` (`clid_tf.core.meta_scope`).
  (Names, not variables, are stored on the model: a list of variables assigned to a Keras
  model would be tracked as the model's own.)
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import keras

BN_MOMENTUM = 0.9  # PyTorch BatchNorm2d momentum 0.1
BN_EPSILON = 1e-5
DEFAULT_INPUT_SHAPE = (None, None, 3)

# PyTorch's default Conv2d / Linear weight init: kaiming_uniform(a=sqrt(5)),
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_DEFAULT = "torch_default"
_KAIMING_FAN_IN = "kaiming_fan_in"
_KAIMING_FAN_OUT = "kaiming_fan_out"


_XAVIER_NORMAL = "xavier_normal"


def _kernel_init(kind: str):
    if kind == _TORCH_DEFAULT:
        return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    if kind == _KAIMING_FAN_IN:
        return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")
    if kind == _KAIMING_FAN_OUT:
        return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    if kind == _XAVIER_NORMAL:  # torch xavier_normal_: N(0, 2 / (fan_in + fan_out))
        return keras.initializers.VarianceScaling(1.0, "fan_avg", "untruncated_normal")
    raise ValueError(f"unknown init {kind!r}")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="clid_tf")
class OptionAShortcut(keras.layers.Layer):
    """He et al. option-A shortcut: x[:, ::2, ::2, :] (if stride 2) zero-padded in channels.

    Parameter-free; `pad` zero channels are added on each side (out = in + 2 * pad).
    """

    def __init__(self, pad: int, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)
        self.stride = int(stride)

    def call(self, inputs):
        x = inputs[:, ::self.stride, ::self.stride, :] if self.stride > 1 else inputs
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.pad, self.pad]])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape

        def sub(n):
            return None if n is None else (n + self.stride - 1) // self.stride

        return (b, sub(h), sub(w), None if c is None else c + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "stride": self.stride}


# ---------------------------------------------------------------------------- helpers


def _conv(x, filters: int, kernel_size: int, stride: int, init: str, name: str, *,
          bias: bool = False):
    """Conv with PyTorch padding (kernel_size // 2 on every side); bias-free unless `bias`
    (then PyTorch's default bias init)."""
    pad = kernel_size // 2
    if stride > 1 and pad > 0:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad > 0 else "valid"
    fan_in = int(x.shape[-1]) * kernel_size * kernel_size
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding=padding,
                               use_bias=bias, kernel_initializer=_kernel_init(init),
                               bias_initializer=_torch_bias_init(fan_in) if bias else "zeros",
                               name=name)(x)


def _bn(x, name: str, *, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON):
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                           name=name)(x)


def _relu(x, name: str):
    return keras.layers.ReLU(name=name)(x)


def _head(inputs, x, num_classes: int, feature_dim: int, *, kernel_init: str,
          zero_bias: bool, name: str, block_names: Sequence[str]) -> keras.Model:
    """GAP -> features; Dense -> logits; returns the functional model (logits, features)
    with its residual blocks' names, input to output."""
    features = keras.layers.GlobalAveragePooling2D(dtype="float32", name="features")(x)
    bias_init = "zeros" if zero_bias else _torch_bias_init(feature_dim)
    logits = keras.layers.Dense(num_classes, kernel_initializer=_kernel_init(kernel_init),
                                bias_initializer=bias_init, dtype="float32",
                                name="logits")(features)
    model = keras.Model(inputs, (logits, features), name=name)
    model.feature_dim = int(feature_dim)
    model.block_names = tuple(block_names)
    return model


_BLOCK_NAME = re.compile(r"^((?:stage|group)(\d+)_block(\d+))_")
_CONV_BLOCK_NAME = re.compile(r"^(block(\d+))_")  # the plain CNNs' conv blocks


def block_names_of(model: keras.Model) -> tuple[str, ...]:
    """The block names of a model built here, read from its layers' names (residual
    `stage<s>_block<b>_...`, `group<g>_block<b>_...`, or the plain CNNs' conv
    `block<b>_...`), input to output: what `model.block_names` holds, for a model that
    lost the attribute (e.g. reloaded from a .keras file). Empty for a model without
    such layers."""
    found = {}
    for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
        match = _BLOCK_NAME.match(layer.name)
        conv = _CONV_BLOCK_NAME.match(layer.name)
        if match:
            found[match.group(1)] = (int(match.group(2)), int(match.group(3)))
        elif conv:
            found[conv.group(1)] = (0, int(conv.group(2)))
    return tuple(sorted(found, key=found.get))


def _input(input_shape: Sequence[int | None]):
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    return keras.Input(tuple(input_shape), name="image")


# ---------------------------------------------------------------------------- ResNet-32


def resnet32(num_classes: int, *, input_shape: Sequence[int | None] = DEFAULT_INPUT_SHAPE
             ) -> keras.Model:
    """He et al. (2016) CIFAR ResNet-32 with option-A shortcuts; features d = 64."""
    return _cifar_resnet(num_classes, 5, input_shape, name="resnet32")


def _cifar_resnet(num_classes: int, blocks_per_stage: int, input_shape, name: str):
    init = _KAIMING_FAN_IN
    inputs = _input(input_shape)
    x = _conv(inputs, 16, 3, 1, init, "stem_conv")
    x = _relu(_bn(x, "stem_bn"), "stem_relu")
    in_planes = 16
    blocks = []
    for s, planes in enumerate((16, 32, 64), start=1):
        for b in range(blocks_per_stage):
            stride = 2 if (s > 1 and b == 0) else 1
            p = f"stage{s}_block{b}"
            blocks.append(p)
            out = _conv(x, planes, 3, stride, init, f"{p}_conv1")
            out = _relu(_bn(out, f"{p}_bn1"), f"{p}_relu1")
            out = _conv(out, planes, 3, 1, init, f"{p}_conv2")
            out = _bn(out, f"{p}_bn2")
            if stride != 1 or in_planes != planes:
                shortcut = OptionAShortcut((planes - in_planes) // 2, stride,
                                           name=f"{p}_shortcut")(x)
            else:
                shortcut = x
            x = _relu(keras.layers.Add(name=f"{p}_add")([out, shortcut]), f"{p}_relu2")
            in_planes = planes
    return _head(inputs, x, num_classes, 64, kernel_init=init, zero_bias=False, name=name,
                 block_names=blocks)


# ------------------------------------------------------- PreAct-ResNet-18 and ResNet-34


def _preact_block(x, in_planes: int, planes: int, stride: int, p: str):
    init = _TORCH_DEFAULT
    a = _relu(_bn(x, f"{p}_bn1"), f"{p}_relu1")
    if stride != 1 or in_planes != planes:
        shortcut = _conv(a, planes, 1, stride, init, f"{p}_shortcut_conv")
    else:
        shortcut = a  # identity on the pre-activated input, as in PreResNet.py
    out = _conv(a, planes, 3, stride, init, f"{p}_conv1")
    out = _relu(_bn(out, f"{p}_bn2"), f"{p}_relu2")
    out = _conv(out, planes, 3, 1, init, f"{p}_conv2")
    return keras.layers.Add(name=f"{p}_add")([out, shortcut])


def _basic_block(x, in_planes: int, planes: int, stride: int, p: str):
    init = _TORCH_DEFAULT
    out = _conv(x, planes, 3, stride, init, f"{p}_conv1")
    out = _relu(_bn(out, f"{p}_bn1"), f"{p}_relu1")
    out = _bn(_conv(out, planes, 3, 1, init, f"{p}_conv2"), f"{p}_bn2")
    if stride != 1 or in_planes != planes:
        shortcut = _bn(_conv(x, planes, 1, stride, init, f"{p}_shortcut_conv"),
                       f"{p}_shortcut_bn")
    else:
        shortcut = x
    return _relu(keras.layers.Add(name=f"{p}_add")([out, shortcut]), f"{p}_relu2")


def _imagenet_style_resnet(block: Callable, num_blocks: Sequence[int], num_classes: int,
                           input_shape, name: str) -> keras.Model:
    """The `PreResNet.ResNet` trunk: conv3x3(64)-BN-ReLU stem, 4 stages 64..512."""
    inputs = _input(input_shape)
    x = _conv(inputs, 64, 3, 1, _TORCH_DEFAULT, "stem_conv")
    x = _relu(_bn(x, "stem_bn"), "stem_relu")
    in_planes = 64
    blocks = []
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
        for b in range(n):
            stride = 2 if (s > 1 and b == 0) else 1
            blocks.append(f"stage{s}_block{b}")
            x = block(x, in_planes, planes, stride, blocks[-1])
            in_planes = planes
    return _head(inputs, x, num_classes, 512, kernel_init=_TORCH_DEFAULT, zero_bias=False,
                 name=name, block_names=blocks)


def preact_resnet18(num_classes: int, *,
                    input_shape: Sequence[int | None] = DEFAULT_INPUT_SHAPE) -> keras.Model:
    """PreAct-ResNet-18 (DivideMix/CLID-MU `PreResNet.ResNet18`); features d = 512.

    The last block ends in conv + shortcut with no BN/ReLU, so features can be negative.
    """
    return _imagenet_style_resnet(_preact_block, (2, 2, 2, 2), num_classes, input_shape,
                                  name="preact_resnet18")


def resnet34(num_classes: int, *,
             input_shape: Sequence[int | None] = DEFAULT_INPUT_SHAPE) -> keras.Model:
    """CIFAR ResNet-34 (BasicBlock [3,4,6,3], 3x3 stem, no maxpool); features d = 512 >= 0."""
    return _imagenet_style_resnet(_basic_block, (3, 4, 6, 3), num_classes, input_shape,
                                  name="resnet34")


# ------------------------------------------------------------------------ Wide ResNet


def _wrn_layout(depth: int, widen_factor: int) -> tuple[int, tuple[int, int, int, int]]:
    """(blocks per group n, widths (stem, group 1, 2, 3)) of WRN-depth-k; depth = 6n + 4."""
    if (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
    return (depth - 4) // 6, (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)


def wide_resnet(depth: int, widen_factor: int, num_classes: int, *,
                input_shape: Sequence[int | None] = DEFAULT_INPUT_SHAPE) -> keras.Model:
    """WRN-depth-k (pre-activation blocks, final BN-ReLU); features d = 64 * k."""
    n, widths = _wrn_layout(depth, widen_factor)
    init = _KAIMING_FAN_OUT
    inputs = _input(input_shape)
    x = _conv(inputs, widths[0], 3, 1, init, "stem_conv")
    in_planes = widths[0]
    blocks = []
    for g, planes in enumerate(widths[1:], start=1):
        for b in range(n):
            stride = 2 if (g > 1 and b == 0) else 1
            p = f"group{g}_block{b}"
            blocks.append(p)
            a = _relu(_bn(x, f"{p}_bn1"), f"{p}_relu1")
            out = _conv(a, planes, 3, stride, init, f"{p}_conv1")
            out = _relu(_bn(out, f"{p}_bn2"), f"{p}_relu2")
            out = _conv(out, planes, 3, 1, init, f"{p}_conv2")
            if in_planes != planes:  # projection of the pre-activated input
                shortcut = _conv(a, planes, 1, stride, init, f"{p}_shortcut_conv")
            else:  # identity on the raw input (stride is 1 whenever widths match)
                shortcut = x
            x = keras.layers.Add(name=f"{p}_add")([out, shortcut])
            in_planes = planes
    x = _relu(_bn(x, "final_bn"), "final_relu")
    return _head(inputs, x, num_classes, widths[3], kernel_init=_TORCH_DEFAULT,
                 zero_bias=True, name=f"wrn{depth}_{widen_factor}", block_names=blocks)


def wrn28_10(num_classes: int, **kwargs) -> keras.Model:
    """WRN-28-10 (WNet backbone); features d = 640."""
    return wide_resnet(28, 10, num_classes, **kwargs)


def wrn28_2(num_classes: int, **kwargs) -> keras.Model:
    """WRN-28-2; features d = 128."""
    return wide_resnet(28, 2, num_classes, **kwargs)


# The CLID-MU USB fork's WRN (ruofanhu/CLID-MU@5cd0608, semi/semilearn/nets/wrn/wrn.py):
# PyTorch BN momentum 0.001, eps 1e-3.
FORK_BN = dict(momentum=0.999, epsilon=1e-3)
FORK_LEAKY_SLOPE = 0.1
FORK_DROPOUT = 0.3


def _fork_bn_act(x, prefix: str, i: int):
    """LeakyReLU(BN(x)) with the fork's BN, layers `<prefix>_bn<i>`, `<prefix>_relu<i>`."""
    x = _bn(x, f"{prefix}_bn{i}", **FORK_BN)
    return keras.layers.LeakyReLU(negative_slope=FORK_LEAKY_SLOPE, name=f"{prefix}_relu{i}")(x)


def fork_wide_resnet(depth: int, widen_factor: int, num_classes: int, *,
                     input_shape: Sequence[int | None] = DEFAULT_INPUT_SHAPE,
                     dropout: float = FORK_DROPOUT) -> keras.Model:
    """The CLID-MU fork's WRN-depth-k (module docstring); features d = 64 * k."""
    n, widths = _wrn_layout(depth, widen_factor)
    init = _KAIMING_FAN_OUT
    inputs = _input(input_shape)
    x = _conv(inputs, widths[0], 3, 1, init, "stem_conv", bias=True)
    in_planes = widths[0]
    blocks = []
    for g, planes in enumerate(widths[1:], start=1):
        for b in range(n):
            stride = 2 if (g > 1 and b == 0) else 1
            p = f"group{g}_block{b}"
            blocks.append(p)
            equal = in_planes == planes
            a = _fork_bn_act(x, p, 1)  # pre-activation of every block, the first included
            out = _conv(a, planes, 3, stride, init, f"{p}_conv1", bias=True)
            out = _fork_bn_act(out, p, 2)
            if dropout:
                out = keras.layers.Dropout(dropout, name=f"{p}_dropout")(out)
            out = _conv(out, planes, 3, 1, init, f"{p}_conv2", bias=True)
            shortcut = x if equal else _conv(a, planes, 1, stride, init,
                                            f"{p}_shortcut_conv", bias=True)
            x = keras.layers.Add(name=f"{p}_add")([out, shortcut])
            in_planes = planes
    x = _fork_bn_act(x, "final", 1)
    return _head(inputs, x, num_classes, widths[3], kernel_init=_XAVIER_NORMAL,
                 zero_bias=True, name=f"wrn{depth}_{widen_factor}_fork", block_names=blocks)


def wrn28_2_fork(num_classes: int, **kwargs) -> keras.Model:
    """WRN-28-2 of the CLID-MU USB fork (semi-supervised trainers; ruofanhu/CLID-MU@5cd0608,
    semi/semilearn/nets/wrn/wrn.py: wrn_28_2()); features d = 128."""
    return fork_wide_resnet(28, 2, num_classes, **kwargs)


BUILDERS: dict[str, Callable[[int], keras.Model]] = {
    "resnet32": resnet32,
    "preact_resnet18": preact_resnet18,
    "resnet34": resnet34,
    "wrn28_10": wrn28_10,
    "wrn28_2": wrn28_2,
    "wrn28_2_fork": wrn28_2_fork,
}
