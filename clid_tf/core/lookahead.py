"""The virtual step theta' = U(theta, g): a differentiable copy of the classifier's next update.

Two kinds (`VIRTUAL_STEPS`), both callables `step(variables, params, grads) -> LookAhead`
on one list of classifier variables, their current values params and the virtual
gradients g (all lists of one length):

  'sgd'        `Sgd(lr)`: theta' = theta - lr * g, the paper's plain step (no
               momentum, no weight decay), at the current scheduled lr.
  'optimizer'  `OptimizerStep(optimizer)`: exactly the update the real classifier optimizer
               would make next from its current state (momentum or Adam slots, iteration
               counter, scheduled lr), with the project's coupled weight decay g + wd * theta
               (`with_decay`), as the authors' `higher` step (ruofanhu/CLID-MU@5cd0608,
               sota/Train_cifar_vri.py: meta_step()). Keras 3 semantics
               (keras/src/optimizers/sgd.py and adam.py `update_step`), per element:
        SGD, momentum 0     theta' = theta - lr g                                D = lr
        SGD, heavy ball     m' = mu m - lr g;  theta' = theta + m'               D = lr
        SGD, nesterov       theta' = theta + mu m' - lr g                        D = lr (1 + mu)
        Adam (t = iterations + 1)
                            m' = m + (1 - b1)(g - m),  v' = v + (1 - b2)(g^2 - v),
                            a = lr sqrt(1 - b2^t) / (1 - b1^t),  s = sqrt(v')
                            theta' = theta - a m' / (s + eps)
                            D = a [(1 - b1) / (s + eps) - m' (1 - b2) g / (s (s + eps)^2)]
               The slots are read, never written: the virtual step leaves the optimizer
               as it found it. Constants are cast as Keras casts them (mu and the betas
               of the bias correction from Python floats through float32).

`LookAhead.slopes` holds D = -d theta'/d g, element by element (the update is element-wise
in g, and theta, the slots and lr do not depend on phi). The hypergradient routes that do
not differentiate through U itself use it: d L/d phi = -(dg/dphi)^T (D * v), v = dL/dtheta'
(the D-scaled shortcut). Adam's D at the first step is lr sqrt(1 - b2) eps / (s + eps)^2 with
s = sqrt(1 - b2) |g|.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf

VIRTUAL_STEPS = ("sgd", "optimizer")


class LookAhead(NamedTuple):
    """One virtual step of a list of variables."""
    params: list[tf.Tensor]       # theta', one per variable
    slopes: list[tf.Tensor]       # D = -d theta'/d g, element-wise; broadcastable to theta'


VirtualStep = Callable[[Sequence[keras.Variable], Sequence[tf.Tensor], Sequence[tf.Tensor]],
                       LookAhead]


def with_decay(grads: Sequence[tf.Tensor], params: Sequence[tf.Tensor], rate,
               decayed: Sequence[bool] | None = None) -> list[tf.Tensor]:
    """PyTorch-style coupled weight decay g + rate * theta, where `decayed` (default: all)."""
    if decayed is None:
        decayed = [True] * len(params)
    return [g + rate * p if d else g for g, p, d in zip(grads, params, decayed)]


def decay_mask(variables: Sequence[keras.Variable],
               no_decay: Sequence[keras.Variable] = ()) -> list[bool]:
    """For each variable, whether weight decay applies to it (not one of `no_decay`)."""
    excluded = {id(v) for v in no_decay}
    return [id(v) not in excluded for v in variables]


def bn_and_bias(model: keras.Model) -> list[keras.Variable]:
    """The BatchNormalization and bias variables of `model`: the variables that the SSL
    integration of the authors' USB fork exempts from weight decay (ruofanhu/CLID-MU@5cd0608,
    semi/semilearn/nets/utils.py: param_groups_weight_decay())."""
    exempt = []
    for layer in model._flatten_layers():  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.BatchNormalization):
            exempt += layer.trainable_weights
        elif getattr(layer, "bias", None) is not None:
            exempt.append(layer.bias)
    return exempt


class Sgd:
    """theta' = theta - lr * g (the paper's plain step); D = lr."""

    def __init__(self, lr):
        self.lr = lr

    def __call__(self, variables, params, grads) -> LookAhead:
        del variables
        lrs = [tf.cast(self.lr, p.dtype) for p in params]
        return LookAhead([p - lr * g for p, g, lr in zip(params, grads, lrs)], lrs)


def _sqrt(x):
    """sqrt whose derivative at 0 is 0 instead of inf (Adam entries with v' = 0: there
    g = 0 and m' = 0, so the true derivative of m' / (sqrt(v') + eps) needs none)."""
    @tf.custom_gradient
    def sqrt(x):
        y = tf.sqrt(x)
        return y, lambda dy: tf.math.divide_no_nan(0.5 * dy, y)
    return sqrt(x)


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer whose update the virtual step copies: a LossScaleOptimizer's inner one;
    raises ValueError for any optimizer or option it cannot copy exactly."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    problems = []
    if type(optimizer) not in (keras.optimizers.SGD, keras.optimizers.Adam):
        problems.append(f"it is {type(optimizer).__name__}")
    else:
        for option in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay",
                       "gradient_accumulation_steps", "loss_scale_factor"):
            if getattr(optimizer, option, None):
                problems.append(f"{option} is set")
        if optimizer.use_ema:
            problems.append("use_ema is set")
        if getattr(optimizer, "amsgrad", False):
            problems.append("amsgrad is set")
    if problems:
        raise ValueError(
            "virtual_step='optimizer' copies keras.optimizers.SGD or Adam (amsgrad off) "
            "without clipping, EMA, gradient accumulation or Keras' own weight decay (use "
            f"the model's weight_decay); the classifier optimizer cannot be copied: "
            f"{', '.join(problems)}")
    return optimizer


class OptimizerStep:
    """theta' = the real classifier optimizer's next update from its current state.

    Args:
      optimizer: the classifier optimizer (keras SGD or Adam, possibly inside a
        LossScaleOptimizer), built on the variables the step is called with.
      weight_decay: coupled decay rate, as the model adds it to the real gradient.
      no_decay: variables exempt from the decay.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, *, weight_decay: float = 0.0,
                 no_decay: Sequence[keras.Variable] = ()):
        self.optimizer = inner_optimizer(optimizer)
        self.weight_decay = float(weight_decay)
        self.no_decay = list(no_decay)

    def __call__(self, variables, params, grads) -> LookAhead:
        opt = self.optimizer
        if self.weight_decay:
            grads = with_decay(grads, params, self.weight_decay,
                               decay_mask(variables, self.no_decay))
        lr = opt.learning_rate  # the schedule at the current iteration
        update = self._adam if isinstance(opt, keras.optimizers.Adam) else self._sgd
        index = opt._get_variable_index  # pylint: disable=protected-access
        steps = [update(index(v), p, g, tf.cast(lr, p.dtype))
                 for v, p, g in zip(variables, params, grads)]
        return LookAhead([s[0] for s in steps], [s[1] for s in steps])

    def _sgd(self, index, theta, g, lr):
        opt = self.optimizer
        if opt.momentum == 0:
            return theta - g * lr, lr
        mu = tf.cast(opt.momentum, theta.dtype)
        m = opt.momentums[index].value
        m_new = m * mu - g * lr
        if opt.nesterov:
            return theta + (m_new * mu - g * lr), lr * (1 + mu)
        return theta + m_new, lr

    def _adam(self, index, theta, g, lr):
        opt = self.optimizer
        dtype = theta.dtype
        t = tf.cast(opt.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(opt.beta_1, dtype), t)
        beta_2_power = tf.pow(tf.cast(opt.beta_2, dtype), t)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m = opt._momentums[index].value  # pylint: disable=protected-access
        v = opt._velocities[index].value  # pylint: disable=protected-access
        m_new = m + (g - m) * (1 - opt.beta_1)
        v_new = v + (tf.square(g) - v) * (1 - opt.beta_2)
        s = _sqrt(v_new)
        denominator = s + opt.epsilon
        theta_new = theta - (m_new * alpha) / denominator
        slope = alpha * ((1 - opt.beta_1) / denominator - tf.math.divide_no_nan(
            m_new * (1 - opt.beta_2) * g, s * tf.square(denominator)))
        return theta_new, slope


def build(kind: str, optimizer: keras.optimizers.Optimizer, *, weight_decay: float = 0.0,
          no_decay: Sequence[keras.Variable] = ()) -> VirtualStep:
    """The virtual step `kind` ('sgd' or 'optimizer', see the module docstring) of the
    classifier `optimizer`, read at its current iteration."""
    if kind == "sgd":
        return Sgd(optimizer.learning_rate)
    if kind == "optimizer":
        return OptimizerStep(optimizer, weight_decay=weight_decay, no_decay=no_decay)
    raise ValueError(f"unknown virtual step {kind!r}; choose from {VIRTUAL_STEPS}")
