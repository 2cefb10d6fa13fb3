"""The real-world backbones: VGG-19-BN (its CLID/VRI feature before the MLP) and
keras.applications' ResNet-50 (pretrained weights and their input convention), and the
replica-consistent dropout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.trainers.meta import model as meta_model
from clid_tf import metanets
from clid_tf.core import meta_scope
from clid_tf.core import virtual

STATS = dict(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def _count(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture(scope="module")
def vgg():
    return backbones.build("vgg19_bn", num_classes=10, input_shape=(32, 32, 3), seed=0,
                           **STATS)


def test_vgg19_bn_parameter_count(vgg):
    """torchvision's vgg19_bn feature convolutions hold 20 024 384 parameters (its
    143 667 240 minus the 123 642 856 of its 4096-unit classifier); then BN's gamma and
    beta for the 5504 channels, and the 512-512-K MLP of the authors' Animal-10N VGG
    (ruofanhu/CLID-MU@5cd0608, sota/vgg.py: VGG.__init__())."""
    convs = _count(v for v in vgg.trainable_variables if v.path.split("/")[-2].startswith(
        "conv"))
    assert convs == 20_024_384
    mlp = (512 * 512 + 512) * 2 + 512 * 10 + 10
    assert _count(vgg.trainable_variables) == 20_024_384 + 2 * 5504 + mlp == 20_565_834


def test_vgg19_bn_feature_is_the_pooled_conv_feature_before_the_mlp(vgg):
    """features = the global average pool of the last conv block [B, 512]; the logits are
    the Dropout-Dense-ReLU x 2 - Dense MLP of them (dropout off at inference), so the
    model has no Dense head on its features."""
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    logits, features = vgg(x, training=False)
    assert features.shape == (3, 512) and logits.shape == (3, 10) and vgg.feature_dim == 512
    body = vgg.get_layer("vgg19_bn")
    taps = keras.Model(body.inputs, [body.get_layer("relu16").output,
                                     body.get_layer("pool5").output])
    last_conv, pooled = taps(vgg.get_layer("standardize")(x))
    assert last_conv.shape == (3, 2, 2, 512)  # 32 / 2^4 before the last pool
    np.testing.assert_allclose(features, np.mean(pooled, axis=(1, 2)), rtol=1e-6)
    hidden = features
    for name in ("fc1", "fc2"):
        hidden = body.get_layer(name)(hidden)
    np.testing.assert_allclose(logits, body.get_layer("logits")(hidden), rtol=1e-5,
                               atol=1e-6)
    assert np.all(features.numpy() >= 0)  # after ReLU (VGG's pooled conv features)
    assert vgg.head is None and vgg.block_names == ()


def test_vgg19_bn_refuses_the_scopes_it_cannot_have_and_small_images(vgg):
    vri = metanets.build("vri", num_classes=10, feature_dim=512, seed=0)
    with pytest.raises(ValueError, match="last_layer needs logits = features @ head"):
        meta_model.MetaReweightModel(vgg, vri, meta_scope="last_layer")
    with pytest.raises(ValueError, match="needs a backbone with named blocks"):
        meta_model.MetaReweightModel(vgg, vri, meta_scope="top:2")
    meta_model.MetaReweightModel(vgg, vri, meta_scope="full")
    with pytest.raises(ValueError, match="at least 32x32"):
        backbones.build("vgg19_bn", num_classes=10, input_shape=(16, 16, 3), **STATS)


def test_vgg19_bn_dropout_is_on_in_training_and_its_state_is_model_state(vgg):
    """Training-mode forwards differ by their dropout masks; the masks' generator state is
    a non-trainable variable (advanced by stateless_call, held by checkpoints)."""
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    states = [v for v in vgg.non_trainable_variables if "seed_generator" in v.path]
    assert len(states) == 2
    trainable = [v.value for v in vgg.trainable_variables]
    frozen = [v.value for v in vgg.non_trainable_variables]
    (a, _), after = vgg.stateless_call(trainable, frozen, x, training=True)
    (b, _), _ = vgg.stateless_call(trainable, frozen, x, training=True)
    (c, _), _ = vgg.stateless_call(trainable, after, x, training=True)
    np.testing.assert_array_equal(a, b)  # same state, same masks
    assert not np.allclose(a, c)  # the advanced state draws new masks
    index = [i for i, v in enumerate(vgg.non_trainable_variables) if v is states[0]][0]
    assert not np.array_equal(after[index], frozen[index])


def test_global_batch_dropout_masks_scales_and_is_the_identity_at_inference():
    layer = backbones.GlobalBatchDropout(0.25, seed=3)
    x = tf.ones([400, 50])
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(y == 0) - 0.25) < 0.01
    assert not np.array_equal(y, layer(x, training=True).numpy())  # a fresh draw per call


@pytest.fixture(scope="module")
def resnet50():
    return backbones.build("resnet50", num_classes=14, input_shape=(32, 32, 3), seed=0,
                           **STATS)


def test_resnet50_parameter_count_features_and_blocks(resnet50):
    """keras.applications' ResNet-50 without its top has 23 534 592 trainable parameters
    (23 587 712 with the BN statistics); the head maps the 2048-d pool to 14 classes."""
    assert _count(resnet50.trainable_variables) == 23_534_592 + 2048 * 14 + 14
    assert _count(resnet50.variables) == 23_587_712 + 2048 * 14 + 14
    logits, features = resnet50(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert logits.shape == (2, 14) and features.shape == (2, 2048)
    assert resnet50.head.name == "logits" and resnet50.feature_dim == 2048
    groups = meta_scope.block_variables(resnet50)
    assert len(groups) == 16 == len(resnet50.block_names)
    assert resnet50.get_layer("resnet50").get_layer("conv1_conv").kernel in groups[0]
    in_blocks = {id(v) for group in groups for v in group}
    assert [v.path for v in resnet50.trainable_variables if id(v) not in in_blocks] == [
        "logits/kernel", "logits/bias"]
    stepped = virtual.stepped_indices(resnet50, virtual.meta_scope.parse("top:2"))
    assert len(stepped) == len(groups[-1]) + len(groups[-2]) + 2
    for layer in resnet50._flatten_layers():  # PyTorch's BN momentum 0.1
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == backbones.BN_MOMENTUM


def test_resnet50_pretrained_weights_take_rgb_as_keras_takes_caffe_bgr(tmp_path):
    """Weights saved from a keras.applications ResNet-50 load with conv1 flipped over its
    input channels and the caffe standardisation: the model on raw RGB pixels gives the
    features keras' own model gives on `resnet50.preprocess_input` (BGR, means off)."""
    keras.utils.set_random_seed(5)
    original = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(32, 32, 3), pooling="avg")
    path = str(tmp_path / "resnet50_notop.weights.h5")
    original.save_weights(path)
    model = backbones.build("resnet50", num_classes=14, input_shape=(32, 32, 3), seed=0,
                            pretrained=path, **STATS)  # STATS are replaced by caffe's
    x = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    want = original(keras.applications.resnet50.preprocess_input(x.copy()), training=False)
    _, features = model(x, training=False)
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="resnet50 only"):
        backbones.build("vgg19_bn", num_classes=3, input_shape=(32, 32, 3), pretrained=path,
                        **STATS)


def _conv_shapes(net) -> list[tuple]:
    """(output height, width, channels) of every conv layer of a built backbone, in order."""
    body = [layer for layer in net.layers if isinstance(layer, keras.Model)][0]
    return [tuple(layer.output.shape[1:]) for layer in body.layers
            if isinstance(layer, keras.layers.Conv2D)]


def test_pooled_cnn_convolves_28x28_images_at_a_quarter_and_a_sixteenth_of_their_pixels():
    """pooled_cnn is small_cnn's three blocks with a pool after each of the first two: the
    64- and 128-channel convolutions run at 14x14 and 7x7 on 28x28 inputs (small_cnn: 28x28
    and 14x14), the same parameters, a quarter of the multiply-adds."""
    shape = dict(num_classes=10, input_shape=(28, 28, 1), mean=(0.3,), std=(0.3,), seed=0)
    pooled, small = backbones.build("pooled_cnn", **shape), backbones.build("small_cnn", **shape)
    assert _conv_shapes(pooled) == [(28, 28, 32), (14, 14, 64), (7, 7, 128)]
    assert _conv_shapes(small) == [(28, 28, 32), (28, 28, 64), (14, 14, 128)]
    assert _count(pooled.trainable_variables) == _count(small.trainable_variables) == (
        9 * 32 + 2 * 32 + 9 * 32 * 64 + 2 * 64 + 9 * 64 * 128 + 2 * 128 + 128 * 10 + 10)

    def macs(shapes, channels_in=1):
        total = 0
        for h, w, c in shapes:
            total, channels_in = total + h * w * 9 * channels_in * c, c
        return total
    assert macs(_conv_shapes(pooled)) == 7_451_136
    assert macs(_conv_shapes(small)) == 29_127_168
    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
    logits, features = pooled(x, training=False)
    assert logits.shape == (2, 10) and features.shape == (2, 128) == (2, pooled.feature_dim)
    assert pooled.head is pooled.get_layer("pooled_cnn").get_layer("logits")


@pytest.mark.parametrize("name", ["small_cnn", "pooled_cnn"])
def test_conv_blocks_are_named_for_top_n_and_found_again_after_a_reload(name, tmp_path):
    """The plain CNNs' conv-BN-ReLU blocks are their `block_names` (top:N steps the head and
    the last N), also on a model reloaded from a .keras file (which loses the attribute)."""
    net = backbones.build(name, num_classes=3, input_shape=(8, 8, 1), mean=(0.3,),
                          std=(0.4,), seed=0)
    assert net.block_names == ("block1", "block2", "block3")
    groups = meta_scope.block_variables(net)
    assert [[v.path for v in g] for g in groups] == [
        [f"block{i}_conv/kernel", f"block{i}_bn/gamma", f"block{i}_bn/beta"] for i in (1, 2, 3)]
    stepped = virtual.stepped_indices(net, meta_scope.parse("top:1"))
    assert [net.trainable_variables[i].path for i in stepped] == [
        "block3_conv/kernel", "block3_bn/gamma", "block3_bn/beta", "logits/kernel",
        "logits/bias"]
    with pytest.raises(ValueError, match="has only 3 blocks"):
        virtual.check_scope(net, "top:4")
    net.save(tmp_path / "net.keras")
    reloaded = meta_model.MetaReweightModel(keras.models.load_model(tmp_path / "net.keras"),
                                            metanets.build("wnet", num_classes=3,
                                                           feature_dim=128, seed=0),
                                            meta_scope="top:2")
    assert reloaded.backbone.block_names == ("block1", "block2", "block3")
