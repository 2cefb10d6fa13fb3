"""Tests for clid_tf.models.resnets: parameter counts, output contract, stateless_call."""

import keras
import numpy as np
import pytest

from clid_tf.models import resnets

K = 10
# name -> (feature_dim, trainable, non-trainable BN moving stats, published total)
EXPECTED = {
    "resnet32": (64, 464_154, 2_272, 0.46e6),
    "preact_resnet18": (512, 11_171_274, 6_912, 11.17e6),
    "resnet34": (512, 21_282_122, 17_024, 21.28e6),
    "wrn28_10": (640, 36_479_194, 17_952, 36.48e6),
    "wrn28_2": (128, 1_467_610, 3_616, 1.47e6),
    "wrn28_2_fork": (128, 1_469_642, 3_640, 1.47e6),
}

_CACHE = {}


def _model(name):
    if name not in _CACHE:
        keras.utils.set_random_seed(0)
        _CACHE[name] = resnets.BUILDERS[name](K)
    return _CACHE[name]


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype("float32")


# ------------------------------------------------- independent parameter-count formulas


def _conv(cin, cout, k=3):
    return cin * cout * k * k


def _expected_counts(name):
    """(trainable, non_trainable) from the architecture description, by hand."""
    convs, bn_channels = 0, 0
    if name == "resnet32":  # option A: parameter-free shortcuts
        convs, bn_channels, cin = _conv(3, 16), 16, 16
        for planes in (16, 32, 64):
            for _ in range(5):
                convs += _conv(cin, planes) + _conv(planes, planes)
                bn_channels += 2 * planes
                cin = planes
        d = 64
    elif name in ("preact_resnet18", "resnet34"):
        convs, bn_channels, cin = _conv(3, 64), 64, 64
        blocks = (2, 2, 2, 2) if name == "preact_resnet18" else (3, 4, 6, 3)
        for planes, n in zip((64, 128, 256, 512), blocks):
            for _ in range(n):
                convs += _conv(cin, planes) + _conv(planes, planes)
                if name == "preact_resnet18":
                    bn_channels += cin + planes          # BN before each conv
                    if cin != planes:
                        convs += _conv(cin, planes, 1)   # 1x1 projection, no BN
                else:
                    bn_channels += 2 * planes            # BN after each conv
                    if cin != planes:
                        convs += _conv(cin, planes, 1)
                        bn_channels += planes            # projection BN
                cin = planes
        d = 512
    elif name == "wrn28_2_fork":  # convs with bias; bn1 and bn2 in every block
        convs, cin = _conv(3, 16) + 16, 16
        for planes in (32, 64, 128):
            for _ in range(4):
                convs += _conv(cin, planes) + planes + _conv(planes, planes) + planes
                bn_channels += cin + planes
                if cin != planes:
                    convs += _conv(cin, planes, 1) + planes
                cin = planes
        bn_channels += cin  # final BN
        d = 128
    else:
        k = 10 if name == "wrn28_10" else 2
        convs, cin = _conv(3, 16), 16
        for planes in (16 * k, 32 * k, 64 * k):
            for _ in range(4):
                convs += _conv(cin, planes) + _conv(planes, planes)
                bn_channels += cin + planes
                if cin != planes:
                    convs += _conv(cin, planes, 1)
                cin = planes
        bn_channels += cin  # final BN
        d = 64 * k
    dense = d * K + K
    seed_states = 2 * 12 if name == "wrn28_2_fork" else 0  # each Dropout's [2] seed state
    return convs + 2 * bn_channels + dense, 2 * bn_channels + seed_states


# ------------------------------------------------------------------------------ tests


def test_registry():
    assert set(resnets.BUILDERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name):
    dim, trainable, non_trainable, published = EXPECTED[name]
    model = _model(name)
    assert _count(model.trainable_variables) == trainable
    assert _count(model.non_trainable_variables) == non_trainable
    assert _expected_counts(name) == (trainable, non_trainable)
    # Published figures are PyTorch `parameters()` counts (trainable only). The BN moving
    # statistics add < 0.5%; for ResNet-32 the rounded "0.46M" leaves 1.4% for the total.
    total = trainable + non_trainable
    assert abs(trainable - published) / published < 0.01
    assert abs(total - published) / published < (0.015 if name == "resnet32" else 0.01)
    assert model.feature_dim == dim and isinstance(model.feature_dim, int)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_contract(name):
    dim = EXPECTED[name][0]
    model = _model(name)
    out = model(_images(), training=False)
    assert isinstance(out, tuple) and len(out) == 2
    logits, features = out
    assert tuple(logits.shape) == (2, K) and tuple(features.shape) == (2, dim)
    assert logits.dtype == "float32" and features.dtype == "float32"
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(features))
    # logits are the final Dense applied to the returned features
    dense = model.get_layer("logits")
    kernel, bias = (np.asarray(v) for v in dense.weights)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(features) @ kernel + bias,
                               rtol=1e-4, atol=1e-4)
    assert kernel.shape == (dim, K)


def test_feature_signs():
    x = _images(4, seed=1)
    _, pre = resnets.preact_resnet18(K)(x, training=True)  # fresh model, training mode
    _, pre_eval = _model("preact_resnet18")(x, training=False)
    assert np.min(pre) < 0 and np.min(pre_eval) < 0
    for name in ("resnet34", "resnet32", "wrn28_2"):
        _, feats = _model(name)(x, training=False)
        assert np.min(feats) >= 0, name


@pytest.mark.parametrize("name,size", [("resnet32", 24), ("resnet32", 40),
                                       ("preact_resnet18", 64), ("wrn28_2", 28)])
def test_other_input_sizes(name, size):
    logits, features = _model(name)(_images(1, size), training=False)
    assert tuple(logits.shape) == (1, K)
    assert tuple(features.shape) == (1, EXPECTED[name][0])


def test_num_classes_and_channels():
    m = resnets.resnet32(100, input_shape=(None, None, 1))
    logits, features = m(np.zeros((3, 16, 16, 1), "float32"))
    assert tuple(logits.shape) == (3, 100) and tuple(features.shape) == (3, 64)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"wrn28_2_fork"}))
def test_layer_conventions(name):
    model = _model(name)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert bns and convs
    assert all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bns)
    assert not any(l.use_bias for l in convs)
    # stride-2 3x3 convs pad 1 pixel on each side like PyTorch (not Keras' 'same')
    for l in convs:
        if l.strides == (2, 2) and l.kernel_size == (3, 3):
            assert l.padding == "valid"


def test_fork_wrn_conventions():
    """The authors' USB-fork WRN (ruofanhu/CLID-MU@5cd0608, semi/semilearn/nets/wrn/wrn.py):
    BN momentum 0.001 (PyTorch) / eps 1e-3, convs with bias, dropout 0.3 in every block,
    LeakyReLU 0.1; every block pre-activates, the first of each group feeding
    LeakyReLU(bn1(x)) to conv1 and to the 1x1 shortcut (`if not self.equalInOut: x =
    self.relu1(self.bn1(x))`; USB's own file keeps that for group 1 only)."""
    model = _model("wrn28_2_fork")
    layers = {l.name: l for l in model.layers}
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(l.momentum == 0.999 and l.epsilon == 1e-3 for l in bns)
    assert all(l.use_bias for l in convs) and len(convs) == 1 + 12 * 2 + 3
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drops) == 12 and all(l.rate == 0.3 for l in drops)
    relus = [l for l in model.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert relus and all(abs(l.negative_slope - 0.1) < 1e-7 for l in relus)
    for g in (1, 2, 3):
        conv1 = layers[f"group{g}_block0_conv1"]
        shortcut = layers[f"group{g}_block0_shortcut_conv"]
        activated = layers[f"group{g}_block0_relu1"].output
        source = conv1.input if g == 1 else conv1.input._keras_history.operation.input
        assert source is activated and shortcut.input is activated  # both pre-activated
        assert layers[f"group{g}_block0_bn1"].input is layers[
            "stem_conv" if g == 1 else f"group{g - 1}_block3_add"].output
    # inference is deterministic (dropout off), training is not (dropout on)
    x = _images(2, seed=5)
    np.testing.assert_array_equal(model(x, training=False)[0], model(x, training=False)[0])
    assert not np.allclose(model(x, training=True)[0], model(x, training=True)[0])


def test_option_a_shortcut():
    x = _images(1, 6)[..., :2]  # [1, 6, 6, 2]
    y = np.asarray(resnets.OptionAShortcut(pad=1)(x))
    assert y.shape == (1, 3, 3, 4)
    np.testing.assert_array_equal(y[..., 1:3], x[:, ::2, ::2, :])
    assert not y[..., 0].any() and not y[..., 3].any()
    # 7x7 input keeps rows/cols 0, 2, 4, 6 like x[::2]
    y = resnets.OptionAShortcut(pad=0)(_images(1, 7))
    assert tuple(y.shape) == (1, 4, 4, 3)


@pytest.mark.parametrize("name", ["resnet32", "preact_resnet18", "wrn28_2"])
def test_stateless_call(name):
    model = _model(name)
    x = _images(4, seed=2)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [np.array(v) for v in model.non_trainable_variables]
    saved_trainable = [np.array(v) for v in model.trainable_variables]

    # inference mode: identical outputs, statistics returned unchanged
    (lg, ft), new_frozen = model.stateless_call(trainable, frozen, x, training=False)
    ref_lg, ref_ft = model(x, training=False)
    np.testing.assert_allclose(lg, ref_lg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ft, ref_ft, rtol=1e-5, atol=1e-5)
    for a, b in zip(new_frozen, frozen):
        np.testing.assert_array_equal(a, b)

    # training mode: updated moving statistics come back; the model is not touched
    (lg, ft), new_frozen = model.stateless_call(trainable, frozen, x, training=True)
    for v, a in zip(model.non_trainable_variables, frozen):
        np.testing.assert_array_equal(np.asarray(v), a)
    for v, a in zip(model.trainable_variables, saved_trainable):
        np.testing.assert_array_equal(np.asarray(v), a)
    assert any(not np.allclose(a, b) for a, b in zip(new_frozen, frozen))

    # a normal training call gives the same outputs and the same statistics update
    ref_lg, ref_ft = model(x, training=True)
    np.testing.assert_allclose(lg, ref_lg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ft, ref_ft, rtol=1e-4, atol=1e-4)
    for v, a in zip(model.non_trainable_variables, new_frozen):
        np.testing.assert_allclose(np.asarray(v), np.asarray(a), rtol=1e-5, atol=1e-6)
    for v, a in zip(model.non_trainable_variables, frozen):  # restore the cached model
        v.assign(a)


def test_stateless_call_uses_substituted_weights():
    model = _model("resnet32")
    x = _images(2, seed=3)
    names = [v.path for v in model.trainable_variables]
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    ik = next(i for i, n in enumerate(names) if n.startswith("logits/") and "kernel" in n)
    ib = next(i for i, n in enumerate(names) if n.startswith("logits/") and "bias" in n)
    swapped = list(trainable)
    swapped[ik] = 2.0 * trainable[ik]
    swapped[ib] = trainable[ib] + 1.0
    (lg, ft), _ = model.stateless_call(swapped, frozen, x, training=False)
    (lg0, ft0), _ = model.stateless_call(trainable, frozen, x, training=False)
    np.testing.assert_allclose(ft, ft0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lg, 2.0 * (np.asarray(lg0) - np.asarray(trainable[ib])) +
                               np.asarray(trainable[ib]) + 1.0, rtol=1e-4, atol=1e-4)
    # substituting a stem conv kernel changes the features
    iconv = names.index(next(n for n in names if n.startswith("stem_conv/")))
    swapped = list(trainable)
    swapped[iconv] = -trainable[iconv]
    (_, ft2), _ = model.stateless_call(swapped, frozen, x, training=False)
    assert not np.allclose(ft2, ft0)
