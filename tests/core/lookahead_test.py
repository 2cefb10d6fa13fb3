"""The virtual step against the real Keras optimizers: theta', D = -d theta'/dg, refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.core import lookahead
from clid_tf.core import schedules
from tests.helpers import small_models as helpers

LR, MU, WD = 0.25, 0.75, 0.05  # exact in float32, through which Keras casts mu
OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "heavy_ball": lambda lr: keras.optimizers.SGD(lr, momentum=MU),
    "nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=MU, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
}


def _variables(seed=0):
    """A kernel [3, 2] (decayed) and a bias [2] (exempt), float64."""
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=(3, 2)), dtype="float64", name="kernel"),
            keras.Variable(rng.normal(size=(2,)), dtype="float64", name="bias")]


def _grads(seed):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(3, 2)) * 0.1), tf.constant(rng.normal(size=(2,)) * 0.1)]


def _optimizer(kind, variables, warm_steps, lr=LR):
    """An optimizer of `kind` built on `variables` after `warm_steps` real updates."""
    optimizer = OPTIMIZERS[kind](lr)
    optimizer.build(variables)
    for k in range(warm_steps):
        optimizer.apply(_grads(100 + k), variables)
    return optimizer


def _copy(kind, lr, optimizer, variables):
    """Fresh variables and a second optimizer of `kind` holding the same state."""
    twins = [keras.Variable(v.numpy(), dtype=v.dtype) for v in variables]
    twin = OPTIMIZERS[kind](lr)
    twin.build(twins)
    for a, b in zip(twin.variables, optimizer.variables):
        a.assign(b)
    return twin, twins


@pytest.mark.parametrize("warm_steps", [0, 3])
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_virtual_step_is_the_real_optimizers_next_update(kind, warm_steps):
    """theta' equals what optimizer.apply makes of the same state and gradient (with the
    coupled decay on the kernel only), and the optimizer's own state is left untouched.
    The lr follows a schedule that drops at iteration 3, so the warm case reads the new
    rate."""
    with helpers.floatx("float64"):
        variables = _variables()
        schedule = schedules.EpochMultiStep(LR, milestones=[1], gamma=0.1, steps_per_epoch=3)
        optimizer = _optimizer(kind, variables, warm_steps, lr=schedule)
        twin, twins = _copy(kind, schedule, optimizer, variables)
        state = helpers.snapshot(optimizer.variables)
        grads = _grads(7)
        step = lookahead.OptimizerStep(optimizer, weight_decay=WD, no_decay=variables[1:])
        ahead = tf.function(lambda: step(variables, [v.value for v in variables], grads))()
        twin.apply(lookahead.with_decay(grads, [v.value for v in twins], WD, [True, False]),
                   twins)
        for got, want in zip(ahead.params, twins):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-14, atol=1e-15)
        for got, want in zip(ahead.params, variables):
            assert not np.allclose(got.numpy(), want.numpy())
        for before, v in zip(state, optimizer.variables):
            np.testing.assert_array_equal(before, v.numpy())
        assert float(optimizer.learning_rate) == pytest.approx(LR * (0.1 if warm_steps else 1))


@pytest.mark.parametrize("warm_steps", [0, 3])
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_slopes_are_minus_the_derivative_of_theta_prime_by_g(kind, warm_steps):
    with helpers.floatx("float64"):
        variables = _variables()
        step = lookahead.OptimizerStep(_optimizer(kind, variables, warm_steps),
                                       weight_decay=WD, no_decay=variables[1:])
        params, grads = [v.value for v in variables], _grads(7)
        with tf.GradientTape() as tape:
            tape.watch(grads)
            ahead = step(variables, params, grads)
            total = tf.add_n([tf.reduce_sum(p) for p in ahead.params])
        for derivative, slope, p in zip(tape.gradient(total, grads), ahead.slopes, params):
            np.testing.assert_allclose(-derivative.numpy(),
                                       np.broadcast_to(slope.numpy(), p.shape), rtol=1e-10)


def test_slopes_in_closed_form():
    """Heavy ball D = lr, nesterov D = lr (1 + mu), the first Adam step
    D = lr sqrt(1 - b2) eps / (sqrt(1 - b2) |g| + eps)^2 (Keras' epsilon placement; Keras
    casts the betas of the bias correction from Python floats through float32)."""
    with helpers.floatx("float64"):
        variables, grads = _variables(), _grads(7)
        params = [v.value for v in variables]

        def slopes(kind, warm_steps=2):
            step = lookahead.OptimizerStep(_optimizer(kind, variables, warm_steps))
            return [np.broadcast_to(d.numpy(), p.shape)
                    for d, p in zip(step(variables, params, grads).slopes, params)]

        for d in slopes("heavy_ball"):
            np.testing.assert_allclose(d, LR, rtol=1e-15)
        for d in slopes("nesterov"):
            np.testing.assert_allclose(d, LR * (1 + MU), rtol=1e-15)
        b1, b2, eps = 0.9, 0.999, 1e-7  # Keras' Adam defaults
        b1_32, b2_32 = float(np.float32(b1)), float(np.float32(b2))
        alpha = LR * np.sqrt(1 - b2_32) / (1 - b1_32)
        for d, g in zip(slopes("adam", warm_steps=0), grads):
            s = np.sqrt(1 - b2) * np.abs(g.numpy())
            np.testing.assert_allclose(d, alpha * (1 - b1) * eps / (s + eps) ** 2, rtol=1e-9)


def test_adam_at_a_zero_gradient_and_zero_velocity_has_a_finite_slope():
    """v' = 0 (fresh state, g = 0): D = lr sqrt(1 - b2) / eps, and the derivative through
    theta' is that too, not NaN (sqrt's derivative at 0 is inf)."""
    with helpers.floatx("float64"):
        variables = _variables()
        step = lookahead.OptimizerStep(_optimizer("adam", variables, 0))
        grads = [tf.zeros_like(v.value) for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(grads)
            ahead = step(variables, [v.value for v in variables], grads)
            total = tf.add_n([tf.reduce_sum(p) for p in ahead.params])
        b1_32, b2_32 = float(np.float32(0.9)), float(np.float32(0.999))  # as in Keras
        want = LR * np.sqrt(1 - b2_32) / (1 - b1_32) * (1 - 0.9) / 1e-7
        for derivative, slope in zip(tape.gradient(total, grads), ahead.slopes):
            np.testing.assert_allclose(slope.numpy(), want, rtol=1e-12)
            np.testing.assert_allclose(-derivative.numpy(), want, rtol=1e-12)


def test_plain_sgd_step():
    params = [tf.constant([1.0, 2.0]), tf.constant(3.0)]
    grads = [tf.constant([0.5, -1.0]), tf.constant(0.0)]
    ahead = lookahead.Sgd(tf.constant(0.1))(None, params, grads)
    np.testing.assert_allclose(ahead.params[0].numpy(), [0.95, 2.1])
    assert float(ahead.params[1]) == 3.0
    assert [float(d) for d in ahead.slopes] == pytest.approx([0.1, 0.1])


def test_a_loss_scale_optimizer_is_copied_through_its_inner_optimizer():
    variables = _variables()
    inner = _optimizer("nesterov", variables, 2)
    wrapped = keras.optimizers.LossScaleOptimizer(inner)
    wrapped.build(variables)
    assert lookahead.inner_optimizer(wrapped) is inner
    params, grads = [v.value for v in variables], _grads(7)
    a = lookahead.OptimizerStep(wrapped)(variables, params, grads)
    b = lookahead.OptimizerStep(inner)(variables, params, grads)
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("optimizer,problem", [
    (keras.optimizers.RMSprop(0.1), "it is RMSprop"),
    (keras.optimizers.AdamW(0.1), "it is AdamW"),
    (keras.optimizers.Adam(0.1, amsgrad=True), "amsgrad is set"),
    (keras.optimizers.SGD(0.1, clipnorm=1.0), "clipnorm is set"),
    (keras.optimizers.SGD(0.1, weight_decay=1e-4), "weight_decay is set"),
    (keras.optimizers.SGD(0.1, use_ema=True), "use_ema is set"),
])
def test_optimizers_it_cannot_copy_are_refused_with_one_clear_error(optimizer, problem):
    with pytest.raises(ValueError, match=f"cannot be copied: {problem}"):
        lookahead.OptimizerStep(optimizer)
    with pytest.raises(ValueError, match="unknown virtual step"):
        lookahead.build("momentum", keras.optimizers.SGD(0.1))


def test_bn_and_bias_lists_the_batchnorm_and_bias_variables():
    net = helpers.tiny_classifier()
    names = sorted(v.path for v in lookahead.bn_and_bias(net))
    assert names == ["bn/beta", "bn/gamma", "dense1/bias", "dense2/bias"]
    mask = lookahead.decay_mask(net.trainable_variables, lookahead.bn_and_bias(net))
    assert [v.path for v, m in zip(net.trainable_variables, mask) if m] == [
        "dense1/kernel", "dense2/kernel"]
