"""A user's own regularization losses (`model.losses`: kernel, bias and activity
regularizers, `add_loss`) are part of the loss every trainer descends, as in Keras' own
train_step: in the actual step, the plain and warm-up steps and the virtual step, never in
the meta objective."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import clid_tf
from clid_tf.core import virtual
from tests.helpers import keras_users as users


def _regularized(strength: float, seed: int = 0) -> keras.Model:
    """Flatten -> Dense(16, relu, activity L1) -> Dense(K) with L2 on both kernels."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(users.SHAPE)
    hidden = keras.layers.Dense(16, activation="relu",
                                kernel_regularizer=keras.regularizers.L2(strength),
                                activity_regularizer=keras.regularizers.L1(strength / 100))(
        keras.layers.Flatten()(inputs))
    logits = keras.layers.Dense(users.NUM_CLASSES,
                                kernel_regularizer=keras.regularizers.L2(strength))(hidden)
    return keras.Model(inputs, logits)


def test_the_virtual_and_actual_gradients_hold_the_regularization_exactly():
    """Against one tape over the whole loss: the virtual step's gradient is J^T dz plus the
    regularization's gradient (global), the actual step's is that too (one replica), and
    the meta objective at theta' reads none of it."""
    x, _, _ = users.digits(32)
    backbone = clid_tf.MetaReweightModel(_regularized(0.3), clid_tf.WeightNet()).backbone
    fwd = virtual.train_forward(backbone, tf.constant(x))
    dz = tf.random.stateless_normal(fwd.logits.shape, seed=[1, 2])
    theta = backbone.trainable_variables
    with tf.GradientTape() as tape:
        logits, _ = backbone(tf.constant(x), training=True)
        total = tf.reduce_sum(logits * dz) + tf.add_n(backbone.losses)
    want = tape.gradient(total, theta)
    assert fwd.regularization is not None and float(fwd.regularization) > 0.0
    for got in (virtual.virtual_gradient(fwd, dz), virtual.training_gradient(fwd, dz)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-5, atol=1e-6)
    without = virtual.train_forward(
        clid_tf.MetaReweightModel(users.functional(activation="linear")).backbone,
        tf.constant(x))
    assert without.regularization is None and without.regularization_grads is None


def _kernel_norm(model: keras.Model) -> float:
    return float(np.linalg.norm(model.layers[-1].kernel.numpy()))


def test_every_trainer_shrinks_a_regularized_kernel_as_plain_keras_does():
    """L2(10) on the head: plain Keras ends with a kernel many times smaller than without
    it; so do MetaReweightModel (warm-up and meta epochs), DivideMixModel (warm-up and
    DivideMix epochs; without its gradient clipping, which caps the step that so strong a
    regularizer asks for while momentum carries the warm-up's) and FixMatchModel."""
    x, y, _ = users.digits(256)
    norms = {}
    for strength in (0.0, 10.0):
        keras_model = _regularized(strength)
        keras_model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                            keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        keras_model.fit(x, y, batch_size=32, epochs=3, verbose=0)
        meta_net = _regularized(strength)
        meta = clid_tf.MetaReweightModel(meta_net, clid_tf.WeightNet())
        meta.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam")
        meta.fit(x, y, batch_size=32, epochs=3, meta_size=64, verbose=0,
                 callbacks=[clid_tf.WarmUp(1)])
        nets = [_regularized(strength, seed) for seed in (0, 1)]
        dividemix = clid_tf.DivideMixModel(nets, [clid_tf.VRINet(), clid_tf.VRINet()],
                                           warmup_epochs=1, clip_norm=0.0)
        dividemix.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam")
        dividemix.fit(x, y, batch_size=32, epochs=2, meta_size=64, verbose=0)
        fix_net = _regularized(strength)
        fixmatch = clid_tf.FixMatchModel(fix_net, clid_tf.WeightNet(normalize=False))
        fixmatch.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam")
        fixmatch.fit(x[:64], y[:64], unlabeled=x[64:], epochs=2, batch_size=16, uratio=2,
                     meta_size=32, flip=False, verbose=0)
        norms[strength] = {"keras": _kernel_norm(keras_model), "meta": _kernel_norm(meta_net),
                           "dividemix": _kernel_norm(nets[0]), "fixmatch": _kernel_norm(fix_net)}
    for name in norms[0.0]:
        assert norms[10.0][name] < norms[0.0][name] / 2, (name, norms)
