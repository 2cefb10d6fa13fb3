"""The look-ahead of meta-learning and its exact hypergradient.

Notation for one training batch: z(theta) = backbone logits [B, K], L_f(z, phi) the
meta-net's weighted loss, dz(phi) = dL_f/dz [B, K], g = J_z^T dz(phi). Then

  virtual step   theta' = U(theta, g)            (`clid_tf.core.lookahead`: plain SGD
                                                  theta - lr g, or the real optimizer's
                                                  next update; D = -d theta'/d g)
  meta loss      L_meta(theta')  on the meta batch (CLID, ...)
  hypergradient  dL_meta/dphi = -(d dz/d phi)^T (J_z (D * v)),  v = dL_meta/dtheta'

U is element-wise in g and nothing else in it depends on phi, so the hypergradient needs
D * v and J_z (D * v), one forward-mode pass over the training batch (`meta_grad='jvp'`),
instead of differentiating through the recorded backward pass and U
(`meta_grad='tape'`, reverse-over-reverse, as the authors' create_graph=True step:
ruofanhu/CLID-MU@5cd0608, main_vri.py: train()). `meta_grad='recompute'` is the
tape route in two passes: v first, then the virtual backward again, recorded and
differentiated with cotangent -D * v, so the meta forward's activations and the recorded
virtual backward are never held together. All are exact, also with BatchNorm in training
mode, where z_i depends on the whole batch. TensorFlow computes many forward-mode JVPs by
transposing backward functions, so on CPU 'jvp' measured slower than 'tape'; 'recompute'
measured 1-3% slower than 'tape' with 18% less peak memory on ResNet-32
(tools/bench_speed.py) and is the default.

The meta scope (`clid_tf.core.meta_scope`) restricts the virtual step to some parameters:
'top:N' steps the head and the last N blocks (residual or conv) and holds the rest at theta, so
that the virtual backward stops at the cut and the meta forward below it is recorded on no
tape; each route is exact for that restricted step. 'last_layer' steps the head alone with
the features of theta reused (`hypergradient_last_layer`).

The backbone runs through Keras 3 `stateless_call` with explicit weight tensors: virtual
and meta forwards use batch statistics and leave the model's BN moving averages alone.
One recorded forward of the training batch (`train_forward`) serves the virtual step and
the actual step.

Under tf.distribute every replica computes its share of each global quantity, following
the rule stated in `clid_tf.core.distribute`; with one device the code reduces to the above.

float16 loss scaling (mixed_float16 only) enters through one `loss_scaling.LossScaling`
argument: the virtual gradient is computed by `unscaled_backward`, the meta backward
starts from `meta_seed`, and every route returns S_m times the true hypergradient (see
`clid_tf.core.loss_scaling`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf.core import meta_scope
from clid_tf.core import objectives

META_GRADS = ("tape", "recompute", "jvp")


class MetaResult(NamedTuple):
    """Outputs of one hypergradient computation (per replica under a strategy)."""
    meta_loss: tf.Tensor          # this replica's share of the meta objective at theta'
                                  # plus the regularizer; summed over replicas = global
    meta_grads: list[tf.Tensor]   # d meta_loss / d phi, one per meta-net variable, times
                                  # the meta loss scale S_m when one is given
    virtual_finite: tf.Tensor | None = None  # with loss scaling: whether the virtual
                                  # step's gradient was finite (else S_t overflowed it)


class TrainForward(NamedTuple):
    """The training batch's forward pass at theta, recorded for later backward passes."""
    tape: tf.GradientTape         # persistent; recorded theta -> logits
    theta: list[tf.Tensor]        # trainable weight values
    frozen: list[tf.Tensor]       # non-trainable values before the step
    logits: tf.Tensor             # [B, K]
    features: tf.Tensor           # [B, d]
    non_trainable: list[tf.Tensor]  # BN statistics updated by this batch
    regularization: tf.Tensor | None = None  # the backbone's own losses (`model.losses`:
                                  # weight and activity regularizers, add_loss), summed
    regularization_grads: list[tf.Tensor] | None = None  # its gradient w.r.t. theta


def regularization_loss(model: keras.Model) -> tf.Tensor | None:
    """This replica's share (1/R) of a model's own losses after a call (`model.losses`:
    kernel, bias and activity regularizers, `add_loss`), float32; None when it has none.

    They belong to the loss the classifier descends, as in Keras' own train_step: the
    trainers add them to every step of theta, the virtual step included (it is a look-ahead
    of that step), and never to a meta objective."""
    total = _summed(model.losses)
    return None if total is None else total / distribute.num_replicas()


def _summed(losses) -> tf.Tensor | None:
    """The sum of a model's losses in float32, None when there are none."""
    return tf.add_n([tf.cast(loss, tf.float32) for loss in losses]) if losses else None


def forward(model: keras.Model, trainable: Sequence[tf.Tensor],
            non_trainable: Sequence[tf.Tensor], images: tf.Tensor, *, training: bool = True):
    """Run `model` with the given weights; returns (logits, features, new_non_trainable).

    The model's own variables are not assigned; updated BN statistics are returned.
    """
    (logits, features), new_non_trainable = model.stateless_call(
        list(trainable), list(non_trainable), images, training=training)
    return logits, features, new_non_trainable


def train_forward(backbone: keras.Model, images: tf.Tensor) -> TrainForward:
    """Forward of the training batch [B, ...] at the current weights, on a persistent tape,
    with the backbone's own losses (`regularization_loss`) and their gradient."""
    theta = [v.value for v in backbone.trainable_variables]
    frozen = [v.value for v in backbone.non_trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        (logits, features), updated, losses = backbone.stateless_call(
            theta, frozen, images, training=True, return_losses=True)
        regularization = _summed(losses)
    grads = None if regularization is None else [_dense(g) for g in tape.gradient(
        regularization, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)]
    return TrainForward(tape, theta, frozen, logits, features, updated, regularization,
                        grads)


def _dense(gradient):
    """A gradient as a dense tensor (an Embedding's lookup gives IndexedSlices, which the
    arithmetic of the virtual step and the second-order pass need dense)."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def backprop(fwd: TrainForward, dz: tf.Tensor,
             stepped: Sequence[int] | None = None) -> list[tf.Tensor]:
    """J_z^T dz: this replica's gradients w.r.t. theta (only theta[i] for i in `stepped`,
    if given) of a loss with logit gradient dz."""
    theta = fwd.theta if stepped is None else [fwd.theta[i] for i in stepped]
    return [_dense(g) for g in fwd.tape.gradient(
        fwd.logits, theta, output_gradients=dz,
        unconnected_gradients=tf.UnconnectedGradients.ZERO)]


def training_gradient(fwd: TrainForward, dz: tf.Tensor,
                      scaling: loss_scaling.LossScaling = loss_scaling.LossScaling()
                      ) -> list[tf.Tensor]:
    """This replica's gradient of the actual step's loss w.r.t. theta, times the loss scale
    S_t: J_z^T (S_t dz) plus its 1/R share of the regularization's gradient times S_t."""
    grads = backprop(fwd, scaling.scale_train(dz))
    if fwd.regularization_grads is None:
        return grads
    share = 1.0 / distribute.num_replicas()
    return [g + tf.cast(scaling.scale_train(r * share), g.dtype)
            for g, r in zip(grads, fwd.regularization_grads)]


def virtual_gradient(fwd: TrainForward, dz: tf.Tensor,
                     scaling: loss_scaling.LossScaling = loss_scaling.LossScaling(),
                     stepped: Sequence[int] | None = None) -> list[tf.Tensor]:
    """grad_theta L_f of the global batch (of theta[i], i in `stepped`, if given): replica
    gradients summed (differentiable), unscaled under loss scaling, plus the gradient of
    the backbone's regularization (the same on every replica; it does not depend on phi)."""
    grads = scaling.unscaled_backward(
        lambda dz: distribute.global_sum(backprop(fwd, dz, stepped)), dz)
    if fwd.regularization_grads is None:
        return grads
    regularization = (fwd.regularization_grads if stepped is None
                      else [fwd.regularization_grads[i] for i in stepped])
    return [g + tf.cast(r, g.dtype) for g, r in zip(grads, regularization)]


def check_scope(backbone: keras.Model, scope: str) -> None:
    """ValueError (one line) unless `scope` is a meta scope that `backbone` can have."""
    parsed = meta_scope.parse(scope)
    if parsed.kind == "top":
        stepped_indices(backbone, parsed)
    if parsed.kind == "last_layer" and getattr(backbone, "head", None) is None:
        raise ValueError(f"meta scope last_layer needs logits = features @ head + bias; "
                         f"{backbone.name} has no such Dense head (e.g. vgg19_bn, whose "
                         "features feed an MLP): use full")


def stepped_indices(backbone: keras.Model, scope: meta_scope.MetaScope) -> list[int]:
    """Indices into backbone.trainable_variables of the parameters that take the virtual
    step under scope 'full' (all) or 'top:N' (all but those of the blocks below
    the last N, `meta_scope.block_variables`); ValueError if the backbone has no N blocks."""
    variables = backbone.trainable_variables
    if scope.kind == "full":
        return list(range(len(variables)))
    names = getattr(backbone, "block_names", ())
    if not names:
        raise ValueError(f"meta scope {scope} needs a backbone with named blocks (residual "
                         f"or conv, `block_names`); {backbone.name} has none")
    if scope.blocks > len(names):
        raise ValueError(f"meta scope {scope}: the backbone has only {len(names)} blocks")
    below = {id(v) for block in meta_scope.block_variables(backbone)[:len(names) - scope.blocks]
             for v in block}
    return [i for i, v in enumerate(variables) if id(v) not in below]


class TrainingLoss(NamedTuple):
    """The meta-net's training loss of one batch, as the hypergradient needs it.

    fn(logits [B, K], features [B, d], regularize) -> objectives.WeightedLoss, whose `loss`
    is differentiable in the logits and in `phi`; `regularize=False` may skip terms only
    the meta step uses (VRI's KL). MetaReweightModel's is `for_meta_net(meta_net, labels)`;
    DivideMix and FixMatch build their own (MixMatch terms, the loss-net's weighted CE).
    """
    fn: Callable[..., objectives.WeightedLoss]
    phi: list                     # the meta-net's trainable variables


def for_meta_net(meta_net: keras.Model, labels: tf.Tensor,
                 sample_weight: tf.Tensor | None = None) -> TrainingLoss:
    """`meta_net.weighted_loss(logits, features, labels)` of a batch with int `labels` [B]
    (and the user's per-sample weights [B], passed only when there are some)."""
    extra = {} if sample_weight is None else {"sample_weight": sample_weight}
    return TrainingLoss(
        lambda logits, features, regularize=True: meta_net.weighted_loss(
            logits, features, labels, regularize=regularize, **extra),
        meta_net.trainable_variables)


class VirtualUpdate(NamedTuple):
    """The virtual step of the stepped parameters of theta."""
    grads: list[tf.Tensor]        # their g, global batch
    ahead: lookahead.LookAhead    # their theta' and D
    theta_prime: list[tf.Tensor]  # every trainable value: theta' where stepped, else theta


def virtual_update(backbone: keras.Model, fwd: TrainForward, dz: tf.Tensor,
                   step: lookahead.VirtualStep, stepped: Sequence[int],
                   scaling: loss_scaling.LossScaling = loss_scaling.LossScaling()
                   ) -> VirtualUpdate:
    """theta' = U(theta, g) for theta[i], i in `stepped`; the other parameters stay at theta
    (the virtual backward stops where no stepped parameter lies below)."""
    grads = virtual_gradient(fwd, dz, scaling, stepped)
    variables = backbone.trainable_variables
    ahead = step([variables[i] for i in stepped], [fwd.theta[i] for i in stepped], grads)
    theta_prime = list(fwd.theta)
    for i, p in zip(stepped, ahead.params):
        theta_prime[i] = p
    return VirtualUpdate(grads, ahead, theta_prime)


def logit_gradient(loss: TrainingLoss, logits: tf.Tensor, features: tf.Tensor, *,
                   regularize: bool = True):
    """dz = dL_f/dz at fixed logits [B, K], differentiable in phi; returns (dz, WeightedLoss).

    regularize=False skips the meta-net's own regulariser (VRI's prior and KL), which only
    the meta step uses.
    """
    with tf.GradientTape() as tape:
        tape.watch(logits)
        weighted = loss.fn(logits, features, regularize=regularize)
    return tape.gradient(weighted.loss, logits), weighted


def replica_meta_loss(meta_objective, features, logits, labels) -> tf.Tensor:
    """This replica's share of the meta objective on the meta batch gathered from all
    replicas: every replica differentiates the same global value, so each takes 1/R."""
    features, logits, labels = distribute.gather((features, logits, labels))
    return meta_objective(features, logits, labels) / distribute.num_replicas()


def _meta_loss(backbone, theta, frozen, meta_batch, meta_objective):
    logits, features, _ = forward(backbone, theta, frozen, meta_batch["image"])
    return replica_meta_loss(meta_objective, features, logits, meta_batch.get("label"))


def hypergradient_tape(backbone: keras.Model, loss: TrainingLoss, fwd: TrainForward,
                       meta_batch: dict, *, step: lookahead.VirtualStep,
                       stepped: Sequence[int], meta_objective: Callable[..., tf.Tensor],
                       scaling: loss_scaling.LossScaling) -> MetaResult:
    """Reverse-over-reverse: differentiate L_meta through the recorded backward pass and the
    virtual step U (full second order, as ruofanhu/CLID-MU@5cd0608, main_vri.py: train())."""
    phi = loss.phi
    with tf.GradientTape() as outer:
        dz, weighted = logit_gradient(loss, fwd.logits, fwd.features)
        update = virtual_update(backbone, fwd, dz, step, stepped, scaling)
        meta_loss = _meta_loss(backbone, update.theta_prime, fwd.frozen, meta_batch,
                               meta_objective)
        total = meta_loss + tf.cast(weighted.regularizer, meta_loss.dtype)
    grads = outer.gradient(total, phi, output_gradients=scaling.meta_seed(total.dtype))
    return MetaResult(total, grads, scaling.finite(update.grads))


def hypergradient_recompute(backbone: keras.Model, loss: TrainingLoss,
                            fwd: TrainForward, meta_batch: dict, *,
                            step: lookahead.VirtualStep, stepped: Sequence[int],
                            meta_objective: Callable[..., tf.Tensor],
                            scaling: loss_scaling.LossScaling) -> MetaResult:
    """Reverse-over-reverse in two passes, for memory: v = dL_meta/dtheta' first (virtual
    backward unrecorded), then the virtual backward recomputed on a tape and
    differentiated with cotangent -D * v. Same gradient as `hypergradient_tape`."""
    phi = loss.phi
    with tf.GradientTape() as phi_tape:
        dz, weighted = logit_gradient(loss, fwd.logits, fwd.features)
        with phi_tape.stop_recording():
            update = virtual_update(backbone, fwd, dz, step, stepped, scaling)
            with tf.GradientTape() as meta_tape:
                meta_tape.watch(update.ahead.params)
                meta_loss = _meta_loss(backbone, update.theta_prime, fwd.frozen, meta_batch,
                                       meta_objective)
            seed = scaling.meta_seed(meta_loss.dtype)
            v = meta_tape.gradient(meta_loss, update.ahead.params, output_gradients=seed,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
        with tf.control_dependencies(v):  # runs after v, so graph CSE cannot merge it with
            dz_again = tf.identity(dz)    # the unrecorded backward above
        recorded = virtual_gradient(fwd, dz_again, scaling, stepped)
        regularizer = tf.cast(weighted.regularizer, meta_loss.dtype)
    # v is this replica's share; the global sum inside virtual_gradient sums the shares.
    grads = phi_tape.gradient(
        [recorded, regularizer], phi,
        output_gradients=[[-d * g for d, g in zip(update.ahead.slopes, v)], seed])
    return MetaResult(meta_loss + regularizer, grads, scaling.finite(update.grads))


def hypergradient_jvp(backbone: keras.Model, loss: TrainingLoss, fwd: TrainForward,
                      images: tf.Tensor, meta_batch: dict, *,
                      step: lookahead.VirtualStep, stepped: Sequence[int],
                      meta_objective: Callable[..., tf.Tensor],
                      scaling: loss_scaling.LossScaling) -> MetaResult:
    """Forward-over-reverse: one JVP of the training batch, along D * v, replaces the
    double backward.

    Under loss scaling v and J_z (D * v) carry S_m (float16 tangents), so the result is
    S_m times the true gradient, as in the tape route.
    """
    phi = loss.phi
    with tf.GradientTape() as phi_tape:  # records only the small map phi -> dz
        dz, weighted = logit_gradient(loss, fwd.logits, fwd.features)
    update = virtual_update(backbone, fwd, tf.stop_gradient(dz), step, stepped, scaling)
    with tf.GradientTape() as meta_tape:
        meta_tape.watch(update.ahead.params)
        meta_loss = _meta_loss(backbone, update.theta_prime, fwd.frozen, meta_batch,
                               meta_objective)
    v = distribute.global_sum(meta_tape.gradient(
        meta_loss, update.ahead.params, output_gradients=scaling.meta_seed(meta_loss.dtype),
        unconnected_gradients=tf.UnconnectedGradients.ZERO))
    tangents = [d * g for d, g in zip(update.ahead.slopes, v)]
    with tf.autodiff.ForwardAccumulator([fwd.theta[i] for i in stepped],
                                        tangents) as accumulator:
        logits, _, _ = forward(backbone, fwd.theta, fwd.frozen, images)
    jz_dv = accumulator.jvp(logits, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    regularizer = tf.cast(weighted.regularizer, meta_loss.dtype)
    grads = phi_tape.gradient(
        [dz, weighted.regularizer], phi,
        output_gradients=[-tf.cast(jz_dv, dz.dtype),
                          tf.ones_like(weighted.regularizer)
                          * scaling.meta_seed(weighted.regularizer.dtype)])
    return MetaResult(meta_loss + regularizer, grads, scaling.finite(update.grads))


def hypergradient_last_layer(backbone: keras.Model, loss: TrainingLoss,
                             fwd: TrainForward, meta_batch: dict, *,
                             step: lookahead.VirtualStep,
                             meta_objective: Callable[..., tf.Tensor],
                             scaling: loss_scaling.LossScaling) -> MetaResult:
    """Virtual step on the classifier head only, features fixed (fast meta-reweighting).

    logits = features @ W + b; (W', b') = U((W, b), grad); the meta batch's features are
    computed once at theta (training-mode BN, stateless) and reused. Everything
    differentiated here is float32 (head, logits, features), so loss scaling only
    multiplies the result by S_m, the factor the meta optimizer removes.
    """
    head = backbone.head
    kernel, bias = head.kernel.value, head.bias.value
    features = tf.stop_gradient(fwd.features)
    _, meta_features, _ = forward(backbone, fwd.theta, fwd.frozen, meta_batch["image"])
    meta_features = tf.stop_gradient(meta_features)
    phi = loss.phi
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch([kernel, bias])
            weighted = loss.fn(features @ kernel + bias, features)
        head_grads = distribute.global_sum(inner.gradient(weighted.loss, [kernel, bias]))
        head_grads = _with_head_regularization(backbone, fwd, head_grads)
        new_kernel, new_bias = step([head.kernel, head.bias], [kernel, bias],
                                    head_grads).params
        meta_logits = meta_features @ new_kernel + new_bias
        meta_loss = replica_meta_loss(meta_objective, meta_features, meta_logits,
                                      meta_batch.get("label"))
        meta_loss += tf.cast(weighted.regularizer, meta_loss.dtype)
    grads = scaling.scale_meta(outer.gradient(meta_loss, phi))
    return MetaResult(meta_loss, grads, scaling.finite(head_grads))


def _with_head_regularization(backbone: keras.Model, fwd: TrainForward,
                              head_grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """The head's gradients plus those of the backbone's regularization on the head's
    kernel and bias (the last_layer virtual step's part of it)."""
    if fwd.regularization_grads is None:
        return head_grads
    variables = backbone.trainable_variables
    found = [next(g for v, g in zip(variables, fwd.regularization_grads) if v is part)
             for part in (backbone.head.kernel, backbone.head.bias)]
    return [g + tf.cast(r, g.dtype) for g, r in zip(head_grads, found)]


def meta_gradients(backbone: keras.Model, meta_net: keras.Model, batch: dict,
                   meta_batch: dict, **kwargs) -> MetaResult:
    """`hypergradient` of MetaReweightModel's step: the meta-net's weighted loss of the
    training batch {'image': [B, ...], 'label': int [B] noisy labels}."""
    return hypergradient(backbone, for_meta_net(meta_net, batch["label"]), batch["image"],
                         meta_batch, **kwargs)


def hypergradient(backbone: keras.Model, loss: TrainingLoss, images: tf.Tensor,
                  meta_batch: dict, *, step: lookahead.VirtualStep,
                  meta_objective: Callable[..., tf.Tensor], meta_grad: str = "recompute",
                  scope: str = "full", fwd: TrainForward | None = None,
                  scaling: loss_scaling.LossScaling = loss_scaling.LossScaling()
                  ) -> MetaResult:
    """Exact hypergradient d L_meta(theta'(phi)) / d phi of one training step.

    Args:
      backbone: classifier, images -> (logits [B, K], features [B, d]); for
        scope='last_layer' it has a `head` Dense layer with logits = features @ W + b, for
        'top:N' `block_names` (`meta_scope.block_variables`).
      loss: the training loss of the batch and its meta-net variables (`TrainingLoss`).
      images: the training batch's inputs [B, ...].
      meta_batch: {'image': [n, ...]} plus 'label' [n] only for labelled objectives.
      step: the virtual step U (`clid_tf.core.lookahead`), e.g. `lookahead.Sgd(lr)` with the
        current scheduled classifier lr, or `lookahead.OptimizerStep(optimizer)`.
      meta_objective: fn(features [n, d], logits [n, K], labels or None) -> scalar.
      meta_grad: 'recompute' (default: reverse-over-reverse in two passes, less memory),
        'tape' (reverse-over-reverse in one, the readable reference) or 'jvp'
        (forward-over-reverse).
      scope: the parameters of the virtual step, 'full', 'last_layer' or 'top:N'
        (`clid_tf.core.meta_scope`).
      fwd: the recorded training forward of `images`, when the caller already has it.
      scaling: float16 loss scales (S_t, S_m); the meta gradients are then S_m times the
        true ones. Default: no loss scaling.
    """
    fwd = fwd or train_forward(backbone, images)
    args = dict(step=step, meta_objective=meta_objective, scaling=scaling)
    parsed = meta_scope.parse(scope)
    if parsed.kind == "last_layer":
        return hypergradient_last_layer(backbone, loss, fwd, meta_batch, **args)
    args["stepped"] = stepped_indices(backbone, parsed)
    if meta_grad == "tape":
        return hypergradient_tape(backbone, loss, fwd, meta_batch, **args)
    if meta_grad == "recompute":
        return hypergradient_recompute(backbone, loss, fwd, meta_batch, **args)
    if meta_grad == "jvp":
        return hypergradient_jvp(backbone, loss, fwd, images, meta_batch, **args)
    raise ValueError(f"unknown meta_grad {meta_grad!r}; choose from {META_GRADS}")
