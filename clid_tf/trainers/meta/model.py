"""`MetaReweightModel`: a Keras model whose train_step is the CLID-MU meta update.

One train_step per training batch (the paper's three steps; steps 1-2 only on every
`meta_every`-th step):
  1. virtual step  theta' = U(theta, grad_theta L_f(theta, phi))      (second order)
     U = plain SGD at the current lr, or a copy of the real optimizer's next update
     (`virtual_step`, `clid_tf.core.lookahead`)
  2. meta step     phi <- meta_optimizer(grad_phi L_meta(theta'))     L_meta = CLID, ...
  3. actual step   theta <- optimizer(grad_theta L_f(theta, phi_new))
Steps 1 and 3 share one recorded forward pass of the training batch (same theta, same
batch statistics). With no meta-net, or while `meta_active` is False (warm-up), the step
is plain cross-entropy training.

A float16 backbone (Keras policy mixed_float16) gets dynamic loss scaling: `compile`
wraps both optimizers in keras.optimizers.LossScaleOptimizer, every backward pass runs on
scaled losses, and each optimizer skips the steps whose gradients overflowed and halves
its scale; all of it behind `loss_scaling.LossScaling` and `loss_scaling.apply`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.data import pipelines
from clid_tf.data import user_data
from clid_tf.data.inputs import read_numpy, to_model
from clid_tf.trainers import base_model


@keras.saving.register_keras_serializable(package="clid_tf")
class MetaReweightModel(base_model.TrainerModel):
    """Classifier trained with a meta-net that weights (or rectifies) its per-sample losses.

    Data per step: {'train': {'image', 'label', optional 'sample_weight', optional
    'is_noisy'}, 'meta': {'image', optional 'label'}}. 'is_noisy' is ground truth used for
    monitoring only; 'label' in the meta batch exists only for labelled meta objectives
    (ce_clean, ce_noisy, ...). `fit` makes these from arrays or Datasets
    (`clid_tf.data.user_data`).

    As a Keras model: `compile(optimizer, meta_optimizer, metrics=...)` takes optimizer
    instances, names or configs (loss= is refused: the meta-net defines the training
    loss); `fit` takes Keras' arguments (sample_weight, class_weight, validation_split,
    validation_data, initial_epoch, callbacks); sample weights s_i scale each sample's
    term together with its meta weight (`clid_tf.data.user_data`); `predict` returns what
    the backbone returns (its output activation applied to the logits); `save`,
    `keras.models.load_model` (after `import clid_tf`), `export` and
    keras.callbacks.BackupAndRestore work as for any Keras model.

    `meta_active` is a Python switch read when the train function is traced: set it, then
    reset `train_function` (see `set_meta_active`), e.g. after the warm-up epochs.

    `virtual_step` is 'sgd' (theta - lr g at the current scheduled lr, the paper's) or
    'optimizer' (the classifier optimizer's own next update, SGD with or without
    momentum/nesterov or Adam, weight decay included: the authors' `higher` step in
    ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py: meta_step()).
    `meta_scope` ('full', 'last_layer', 'top:N') picks the parameters of the virtual step
    (`clid_tf.core.meta_scope`). `meta_every` = k runs steps 1 and 2 only on the steps whose
    classifier iteration counter is a multiple of k (a tf.cond, no retracing); the steps in
    between train theta with the meta-net as it is. `no_decay` lists backbone variables
    exempt from the coupled weight decay, in the actual step and in the 'optimizer' virtual
    step alike (e.g. `lookahead.bn_and_bias(net)`).
    """

    def __init__(self, backbone: keras.Model, meta_net: keras.Model | None = None, *,
                 meta_objective: str | Callable[..., tf.Tensor] = "clid", tau: float = 0.5,
                 meta_objective_name: str | None = None,
                 meta_grad: str = "recompute", meta_scope: str = "full",
                 virtual_step: str = "sgd", meta_every: int = 1,
                 weight_decay: float = 5e-4, meta_weight_decay: float = 5e-4,
                 no_decay: Sequence[keras.Variable] = (), **kwargs):
        """
        Args:
          backbone: any Keras classifier: one that returns (logits, features), or a
            functional/Sequential model whose last layer is Dense (its penultimate
            activations are tapped as features, `user_models.as_classifier`).
          meta_net: `meta_nets.WeightNet`, `vri.VRINet`, or None (plain cross-entropy).
          meta_objective: a name of `objectives.META_OBJECTIVE_LABELS` ('clid': label-free)
            or fn(features [n, d], logits [n, K], labels [n] or None) -> scalar.
          tau: CLID temperature (named objectives).
          meta_objective_name: the name logged for it (`meta_<name>`); default: its name.
          meta_grad, meta_scope: how the hypergradient is computed (clid_tf.core.virtual).
          virtual_step: 'sgd' (theta - lr g) or 'optimizer' (a differentiable copy of the
            classifier optimizer's next update, clid_tf.core.lookahead).
          meta_every: a meta update on every k-th training step only.
          weight_decay, meta_weight_decay: PyTorch-style coupled L2 of theta and phi.
          no_decay: classifier variables without weight decay (e.g. BN and biases).
        """
        super().__init__(**kwargs)
        base_model.check_virtual_step(virtual_step)
        base_model.check_meta_net(meta_net)
        if int(meta_every) != meta_every or meta_every < 1:
            raise ValueError(f"meta_every must be an integer >= 1, got {meta_every!r}")
        self.backbone = base_model.checked_classifier(backbone, meta_scope)
        self.meta_net = meta_net
        self.objective_given = base_model.objective_config(meta_objective)
        self.meta_objective, self.meta_objective_name = base_model.meta_objective_of(
            meta_objective, tau=tau, name=meta_objective_name)
        self.tau = float(tau)
        self.meta_grad = meta_grad
        self.meta_scope = meta_scope
        self.virtual_step = virtual_step
        self.meta_every = int(meta_every)
        self.no_decay = list(no_decay)
        self.meta_active = meta_net is not None
        self.weight_decay = float(weight_decay)
        self.meta_weight_decay = float(meta_weight_decay)
        base_model.size_meta_net(meta_net, self.backbone)
        mean = keras.metrics.Mean
        self.loss_tracker = mean(name="loss")
        self.lr_tracker = mean(name="lr")
        self.meta_trackers = {} if meta_net is None else {
            "meta": mean(name=f"meta_{self.meta_objective_name}"),
            "meta_lr": mean(name="meta_lr"),
            **self.weight_trackers(),
        }
        self._init_test_metrics(self.loss_tracker)
        self.trace_count = 0  # Python side effect: counts how often train_step is traced
        self.meta_set = None  # the meta set `fit` drew from array or dataset inputs
        self.built = True  # backbone and meta-net arrive built; fit need not trace `call`

    @property
    def metrics(self):
        return [self.loss_tracker, self.lr_tracker, *self.meta_trackers.values(),
                *self.evaluation_metrics()]

    def networks(self):
        return [(self.backbone, self.meta_net)]

    def predicting(self):
        return [self.backbone]

    @property
    def meta_optimizer(self):
        """The meta-net's optimizer (None without a meta-net)."""
        return self.meta_optimizers[0]

    def compile(self, optimizer="sgd", meta_optimizer=None, **kwargs):
        """optimizer (theta) and meta_optimizer (phi): instances, names or configs; a
        float16 backbone gets both wrapped in keras.optimizers.LossScaleOptimizer."""
        self._compile_optimizers([optimizer], [meta_optimizer], **kwargs)

    def set_meta_active(self, active: bool) -> None:
        """Switches meta updates on or off; the next fit traces a new train function."""
        self.meta_active = bool(active) and self.meta_net is not None
        self.train_function = None

    def fit(self, x=None, y=None, *, batch_size: int | None = None, epochs: int = 1,
            sample_weight=None, class_weight=None, validation_split: float = 0.0,
            validation_data=None, initial_epoch: int = 0, callbacks=None, meta_data=None,
            meta_size: int = 1000, meta_batch_size: int = 100, seed: int = 0, **kwargs):
        """keras.Model.fit on a user's data, or on a ready stream.

        x may be inputs [N, ...] with labels y ([N] or [N, 1] int, or one-hot [N, K]), a
        tf.data.Dataset of (inputs, labels[, sample_weights]) batches or of {'image',
        'label'[, 'sample_weight']} dicts, or the stream the command line makes ({'train':
        ..., 'meta': ...} elements). For user data a label-free meta set is drawn from the
        training inputs when `meta_data` is not given: a random `meta_size` subset
        (seeded), or for a Dataset `meta_size` samples of a seeded shuffle of one pass;
        labelled meta objectives (ce_noisy, mae, ...) get those samples' labels,
        'ce_clean' needs `meta_data=(inputs, clean labels)`. It is kept as
        `self.meta_set`, where `ClidSelection` finds it. Array streams are seeded by epoch,
        so `initial_epoch` (or a keras.callbacks.BackupAndRestore) continues exactly.
        sample_weight, class_weight, validation_split and validation_data are Keras'
        (`clid_tf.data.user_data`); every other argument is keras.Model.fit's. Bad
        arguments raise ValueError before the first step.
        """
        callbacks = list(callbacks or [])
        if not _is_training_stream(x):
            first = base_model.backup_epoch(callbacks)
            prepared = user_data.prepare(
                x, y, num_classes=self.num_classes, batch_size=batch_size or 32,
                meta_size=meta_size, meta_batch_size=meta_batch_size, seed=seed,
                with_meta=self.meta_net is not None, meta_data=meta_data,
                meta_labels=base_model.objective_labels(self.objective_given),
                first_epoch=initial_epoch if first is None else first,
                sample_weight=sample_weight, class_weight=class_weight,
                validation_split=validation_split, validation_data=validation_data,
                steps_per_epoch=kwargs.get("steps_per_epoch"))
            base_model.check_takes_sample_weights(self.meta_net, prepared.stream)
            x, y, self.meta_set = prepared.stream, None, prepared.meta_set
            validation_data, self.input_profile = prepared.validation_data, prepared.profile
            if prepared.steps is not None:
                kwargs.setdefault("steps_per_epoch", prepared.steps)
        elif sample_weight is not None or class_weight is not None or validation_split:
            raise ValueError("a ready training stream carries its own weights; "
                             "sample_weight, class_weight and validation_split are for user "
                             "data")
        kwargs["shuffle"] = False  # streams shuffle themselves (seeded per epoch)
        callbacks = [base_model.EveryEpochMetric(self._phase_metrics(x)), *callbacks]
        return super().fit(x, y, epochs=epochs, validation_data=validation_data,
                           initial_epoch=initial_epoch, callbacks=callbacks, **kwargs)

    def _phase_metrics(self, stream) -> list[str]:
        """The metrics only meta epochs report (the warm-up's epochs get NaN for them):
        the meta loss and lr, and with ground-truth noise flags the clean/noisy weights."""
        if self.meta_net is None:
            return []
        names = [self.meta_trackers["meta"].name, "meta_lr"]
        if "is_noisy" in stream.element_spec["train"]:
            names += ["weight_clean", "weight_noisy"]
        return names

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False, *, meta_x=None):
        """One training step on the batch (x, y), as keras.Model.train_on_batch: with the
        meta step when the meta-net is active, on the meta batch `meta_x` (inputs, no
        labels), else on the first meta batch of the meta set the last fit drew, else on x
        itself (CLID reads no labels). Labelled meta objectives need `fit`'s meta set."""
        if not self.compiled:
            raise ValueError("train_on_batch needs a compiled model: compile(optimizer, "
                             "meta_optimizer) first")
        inputs, labels, weights, _ = user_data.in_memory(  # fit's checks of arrays
            x, y, num_classes=self.num_classes, validation=None, sample_weight=sample_weight,
            class_weight=class_weight)
        batch = {"image": _tensors(inputs), "label": tf.constant(labels)}
        if weights is not None:
            batch["sample_weight"] = tf.constant(weights)
        data = {"train": batch}
        if self.meta_net is not None:
            data["meta"] = self._meta_batch_of(inputs, meta_x)
        self.make_train_function()
        self.reset_metrics()
        logs = {name: float(value) for name, value in self.train_function(iter([data])).items()}
        return logs if return_dict else self._flatten_metrics_in_order(logs)

    def _meta_batch_of(self, inputs, meta_x) -> dict:
        """{'image' float32 [n, ...]} for `train_on_batch`, with labels where the meta
        objective reads them."""
        labelled = base_model.objective_labels(self.objective_given) != "none"
        if meta_x is None and self.meta_set is not None:
            part = self.meta_set
            ids = part.ids()[:100]
            meta = {"image": _tensors(read_numpy(part.inputs, ids))}
            if labelled:
                if part.labels is None:
                    raise ValueError("the meta objective reads labels, but the meta set "
                                     "has none")
                meta["label"] = tf.constant(np.asarray(part.labels)[:100].astype(np.int32))
            return meta
        if labelled:
            raise ValueError(f"the meta objective {self.meta_objective_name!r} reads meta "
                             "labels: fit with meta_data=(inputs, labels) first")
        images = inputs if meta_x is None else pipelines.as_input_array(meta_x)
        return {"image": _tensors(images)}

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "meta_net": (None if self.meta_net is None
                         else keras.saving.serialize_keras_object(self.meta_net)),
            "meta_objective": self.objective_given,
            "meta_objective_name": self.meta_objective_name, "tau": self.tau,
            "meta_grad": self.meta_grad, "meta_scope": self.meta_scope,
            "virtual_step": self.virtual_step, "meta_every": self.meta_every,
            "weight_decay": self.weight_decay, "meta_weight_decay": self.meta_weight_decay,
            "output_activation": self.output_activation, **self.profile_config(),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        meta_net = config.pop("meta_net")
        if meta_net is not None:
            meta_net = keras.saving.deserialize_keras_object(meta_net)
        extras = cls.pop_user_extras(config)
        return cls(backbone, meta_net, **config).restore_user_extras(extras)

    # ---------------------------------------------------------------- the algorithm
    def train_step(self, data):
        self.trace_count += 1
        batch = data["train"]
        lr = self.optimizer.learning_rate  # the current scheduled lr, before this update
        scaling = loss_scaling.LossScaling.of(self.optimizer, self.meta_optimizer)  # float16
        if not self.meta_active:
            loss, logits = self._plain_step(batch, scaling)
            return self._log(loss, lr, batch=batch, logits=logits)
        fwd = virtual.train_forward(self.backbone, batch["image"])
        meta_loss, meta_taken = self._meta_update(batch, data["meta"], fwd, scaling)
        loss, weights = self._actual_step(batch, fwd, scaling)
        return self._log(loss, lr, meta_loss=meta_loss, meta_taken=meta_taken, weights=weights,
                         batch=batch, logits=fwd.logits)

    def _meta_update(self, batch, meta_batch, fwd, scaling):
        """Steps 1 and 2 on the steps whose classifier iteration counter is a multiple of
        `meta_every` (every step for 1); in between phi stays as it is.

        Returns (meta loss, whether the meta update ran: a bool tensor, None for every step).
        """
        if self.meta_every == 1:
            return self._virtual_and_meta_step(batch, meta_batch, fwd, scaling), None
        taken = tf.equal(tf.math.floormod(tf.convert_to_tensor(self.optimizer.iterations),
                                          self.meta_every), 0)
        dtype = fwd.logits.dtype
        skip = lambda *_: tf.zeros([], dtype)  # noqa: E731
        if (distribute.num_replicas() == 1
                or tf.__internal__.distribute.strategy_supports_no_merge_call()):
            meta_loss = tf.cond(taken, lambda: tf.cast(self._virtual_and_meta_step(
                batch, meta_batch, fwd, scaling), dtype), skip)
            return meta_loss, taken
        # The backward of the recorded forward belongs to this replica context (synchronised
        # BN), so the branch, which runs in another one, records the forward again.
        return distribute.cross_replica_cond(
            taken, lambda b, m, s: tf.cast(self._virtual_and_meta_step(
                b, m, virtual.train_forward(self.backbone, b["image"]), s), dtype),
            skip, args=(batch, meta_batch, scaling)), taken

    def _virtual_and_meta_step(self, batch, meta_batch, fwd, scaling) -> tf.Tensor:
        """Steps 1 and 2: hypergradient through the virtual step, then update phi."""
        step = lookahead.build(self.virtual_step, self.optimizer,
                               weight_decay=self.weight_decay, no_decay=self.no_decay)
        result = virtual.meta_gradients(
            self.backbone, self.meta_net, batch, meta_batch, step=step,
            meta_objective=self.meta_objective, meta_grad=self.meta_grad,
            scope=self.meta_scope, fwd=fwd, scaling=scaling)
        # float16: an overflowed virtual step is S_t's fault, so S_m stays (None: no scaling)
        overflowed = (None if result.virtual_finite is None
                      else tf.logical_not(result.virtual_finite))
        loss_scaling.apply(self.meta_optimizer, result.meta_grads,
                           self.meta_net.trainable_variables,
                           weight_decay=self.meta_weight_decay, keep_scale=overflowed)
        if overflowed is None:
            return result.meta_loss
        # A step skipped for an overflowed virtual step reports NaN, which _log leaves out.
        return tf.where(overflowed, float("nan"), result.meta_loss)

    def _actual_step(self, batch, fwd, scaling):
        """Step 3: the updated meta-net weights the recorded forward; update theta and BN."""
        dz, weighted = virtual.logit_gradient(
            virtual.for_meta_net(self.meta_net, batch["label"], batch.get("sample_weight")),
            fwd.logits, fwd.features, regularize=False)
        loss_scaling.apply(self.optimizer, virtual.training_gradient(fwd, dz, scaling),
                           self.backbone.trainable_variables, weight_decay=self.weight_decay,
                           decayed=self._decayed())
        for variable, value in zip(self.backbone.non_trainable_variables, fwd.non_trainable):
            variable.assign(value)
        loss = weighted.loss
        if fwd.regularization is not None:  # reported as Keras reports it: in the loss
            loss += tf.cast(fwd.regularization, loss.dtype) / distribute.num_replicas()
        return loss, weighted.per_sample_weights()

    def _plain_step(self, batch, scaling):
        """Cross-entropy (times the sample weights) of the batch; returns (loss, logits)."""
        theta = self.backbone.trainable_variables
        with tf.GradientTape() as tape:
            logits, _ = self.backbone(batch["image"], training=True)
            losses = objectives.per_sample_ce(logits, batch["label"])
            if "sample_weight" in batch:
                losses = losses * tf.cast(batch["sample_weight"], losses.dtype)
            loss = distribute.global_mean(losses)
            regularization = virtual.regularization_loss(self.backbone)
            if regularization is not None:
                loss += tf.cast(regularization, loss.dtype)
            scaled_loss = scaling.scale_train(loss)
        loss_scaling.apply(self.optimizer, tape.gradient(scaled_loss, theta), theta,
                           weight_decay=self.weight_decay, decayed=self._decayed())
        return loss, logits

    def _decayed(self) -> list[bool]:
        """Per backbone trainable variable: whether the weight decay applies to it."""
        return lookahead.decay_mask(self.backbone.trainable_variables, self.no_decay)

    # ---------------------------------------------------------------- monitoring
    def _log(self, loss, lr, *, meta_loss=None, meta_taken=None, weights=None, batch=None,
             logits=None):
        """Metrics of one step; `weights` [B] are the per-sample meta weights; a step
        without a meta update (`meta_taken` False) leaves the meta loss out; the compiled
        metrics see the batch's logits against its given labels."""
        loss = distribute.global_sum(loss)  # replica shares -> the global value
        self.loss_tracker.update_state(loss)
        self.lr_tracker.update_state(lr)
        updated = [self.loss_tracker, self.lr_tracker]
        if self.meta_trackers:
            self.meta_trackers["meta_lr"].update_state(self.meta_optimizer.learning_rate)
            updated.append(self.meta_trackers["meta_lr"])
        scales = loss_scaling.logged_scales(self.optimizer, self.meta_optimizer)  # float16
        if meta_loss is not None:
            meta_loss = distribute.global_sum(meta_loss)
            counted = None if meta_taken is None else tf.cast(meta_taken, tf.float32)
            if scales:  # a skipped meta step's loss (NaN) is not averaged in
                finite = tf.math.is_finite(meta_loss)
                meta_loss = tf.where(finite, meta_loss, 0.0)
                counted = tf.cast(finite, tf.float32) * (1.0 if counted is None else counted)
            self.meta_trackers["meta"].update_state(meta_loss, sample_weight=counted)
            updated.append(self.meta_trackers["meta"])
            updated += self.log_weights(self.meta_trackers, weights, batch)
        compiled = self.update_user_metrics(batch["label"], logits, batch.get("sample_weight"))
        return {**{m.name: m.result() for m in updated}, **scales, **compiled}


def _tensors(inputs):
    """Numpy inputs (one array or a structure) as the model's tensors (`to_model`)."""
    return to_model(tf.nest.map_structure(tf.constant, inputs))


def _is_training_stream(x) -> bool:
    """Whether x is a ready {'train': ..., 'meta': ...} stream rather than user data."""
    return (isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, dict)
            and "train" in x.element_spec)
