"""`DivideMixModel`: two networks trained by DivideMix, optionally with a meta-net per
network meta-learned by CLID through the real optimizer's virtual step: a VRI rectifier
(the authors' CIFAR script: ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py) or any
meta-net whose `weighted_loss` weights given per-row terms (WNet).

Per epoch (`fit`): warm-up epochs train each network with CE (+ a confidence penalty for
asymmetric noise); after them, each network's GMM divides the training samples and the
OTHER network trains on that division (co-divide), net 1 first, then net 2. One step of
network N with the other network P:

  1. targets      co-guess t_u (N and P on both unlabeled views), co-refine t_x (N's views
                  and the other net's clean probability w); no gradient
  2. mixup        l = max(l', 1 - l'), l' ~ Beta(alpha, alpha), one permutation of all rows
  3. virtual step theta' = U(theta, grad L(theta, phi)): U the real optimizer's next update
                  (`lookahead`), L = the meta-net's weighting of the rows of L_x + lambda(t)
                  L_u (`mixmatch.row_losses`; VRI: on the rectified logits omega * z,
                  omega = VRI(feature, argmax Y~); WNet: w(row term) * row term,
                  normalised) + pen on the raw logits; unclipped
  4. meta step    phi <- Adam(grad_phi CLID(theta') on a batch of N's own meta set)
  5. actual step  theta <- SGD(clip(grad L(theta, phi_new), 0.8)), a fresh eps for omega

Without meta-nets (`meta_nets=None`) steps 3-4 are skipped and L = L_x + lambda L_u + pen:
plain DivideMix.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.trainers.dividemix import mixmatch as dividemix
from clid_tf.trainers.dividemix import streams as dividemix_data
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.trainers import base_model

GUESS_BN_MODES = ("train", "inference")
_TERMS = ("l_x", "l_u", "penalty", "lambda_u", "meta_regularizer")


class MixedBatch(NamedTuple):
    """This replica's rows of the mixed batch."""
    images: tf.Tensor       # X~ [n, ...]
    targets: tf.Tensor      # Y~ [n, K]
    num_labeled: int        # rows [0, num_labeled) come first from the labeled views
    rows: tf.Tensor         # int32 [n] their positions in the global mixed batch


def _check_weighs_rows(meta_net) -> None:
    """ValueError (one line) unless `meta_net.weighted_loss` takes the terms it weights
    (`per_sample_loss`: the rows of the MixMatch loss) and the rows of this replica's
    samples (`rows`): the contract's optional arguments DivideMix needs."""
    missing = base_model.takes_arguments(meta_net, "per_sample_loss", "rows")
    if missing:
        raise ValueError(f"DivideMixModel weights the rows of its MixMatch loss through "
                         f"meta_net.weighted_loss(..., per_sample_loss=, rows=); "
                         f"{type(meta_net).__name__}.weighted_loss has no "
                         f"{' or '.join(missing)} argument (clid_tf.WeightNet() and "
                         "clid_tf.VRINet() have both)")


def _check_two(parts: list, what: str, example: str) -> None:
    """ValueError (one line) when the two networks (or meta-nets) share variables: one
    model passed twice would train as one."""
    first = {id(v) for v in parts[0].weights}
    if parts[0] is parts[1] or any(id(v) in first for v in parts[1].weights):
        raise ValueError(f"DivideMix trains two separate {what}, but the two given share "
                         f"their variables (one model passed twice?); give two, e.g. "
                         f"{example}")


@keras.saving.register_keras_serializable(package="clid_tf")
class DivideMixModel(base_model.TrainerModel):
    """Two classifiers trained by DivideMix (+ VRI + CLID when `meta_nets` are given).

    Args:
      backbones: two classifiers images -> (logits [B, K], features [B, d]).
      meta_nets: two meta-nets whose `weighted_loss` takes `per_sample_loss` and `rows`
        (`clid_tf.VRINet()` rectifiers, as the authors, or `clid_tf.WeightNet()`
        re-weighting each row's term), or None (plain DivideMix).
      meta_objective: 'clid', 'entropy' (label-free) or fn(features, logits, None).
      tau: CLID temperature.
      meta_grad, meta_scope: the hypergradient route and scope (`clid_tf.core.virtual`).
      virtual_step: 'optimizer' (the real optimizer's differentiable next update)
        or 'sgd' (theta - lr g).
      weight_decay, meta_weight_decay: coupled L2 of theta and phi (PyTorch style).
      warmup_epochs: CE epochs before the co-divide.
      warmup_penalty: add the negative-entropy penalty in warm-up (asymmetric noise).
      p_threshold, alpha, temperature: division threshold, Beta(alpha, alpha), sharpening T.
      lambda_u, rampup_epochs: L_u weight, ramped linearly over this many epochs after
        the warm-up.
      clip_norm: global-norm clip of the actual step's gradient (0 = none).
      guess_bn_mode: N's co-guessing forwards in 'train' mode (DivideMix: they update N's
        BN statistics) or 'inference'.
      seed: seed of the mixup draws (stateless in (seed, net, iteration)).

    The defaults are the command line's. As a Keras model: `compile(optimizer,
    meta_optimizer)` takes one optimizer (copied for each network) or a list of two,
    as instances, names or configs; `fit(x, y)` builds DivideMix's streams itself;
    `predict` returns the user's output activation of the two networks' mean logits;
    `save` / `keras.models.load_model` and `export` work. What differs: no
    sample_weight / class_weight (the co-divide weighs the samples), and an epoch's length
    follows that epoch's division, so `steps_per_epoch` is not an argument.
    """

    def __init__(self, backbones: Sequence[keras.Model],
                 meta_nets: Sequence[keras.Model] | None = None, *,
                 meta_objective: str | Callable[..., tf.Tensor] = "clid", tau: float = 0.5,
                 meta_grad: str = "recompute", meta_scope: str = "full",
                 virtual_step: str = "optimizer", weight_decay: float = 5e-4,
                 meta_weight_decay: float = 5e-4, warmup_epochs: int = 5,
                 warmup_penalty: bool = False, p_threshold: float = 0.5, alpha: float = 4.0,
                 temperature: float = 0.5, lambda_u: float = 150.0, rampup_epochs: int = 16,
                 clip_norm: float = 0.8, guess_bn_mode: str = "train", seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if len(backbones) != 2 or (meta_nets is not None and len(meta_nets) != 2):
            raise ValueError("DivideMix trains two backbones (and two meta-nets or none)")
        if guess_bn_mode not in GUESS_BN_MODES:
            raise ValueError(f"guess_bn_mode must be one of {GUESS_BN_MODES}")
        base_model.check_virtual_step(virtual_step)
        for meta_net in meta_nets or ():
            base_model.check_meta_net(meta_net, "each of meta_nets")
            _check_weighs_rows(meta_net)
        self.backbones = [base_model.checked_classifier(net, meta_scope) for net in backbones]
        _check_two(self.backbones, "networks", "[keras.models.clone_model(net) for _ in "
                   "range(2)], each built")
        if meta_nets is not None:
            _check_two(list(meta_nets), "meta-nets", "[clid_tf.VRINet(), clid_tf.VRINet()]")
        self.meta_nets = None if meta_nets is None else list(meta_nets)
        for net, meta_net in zip(self.backbones, self.meta_nets or ()):
            base_model.size_meta_net(meta_net, net)
        self.objective_given = base_model.objective_config(meta_objective)
        self.meta_objective, name = base_model.meta_objective_of(meta_objective, tau=tau)
        self.meta_objective_name, self.tau = name, float(tau)
        self.meta_grad, self.meta_scope, self.virtual_step = meta_grad, meta_scope, virtual_step
        self.weight_decay, self.meta_weight_decay = float(weight_decay), float(meta_weight_decay)
        self.warmup_epochs, self.warmup_penalty = int(warmup_epochs), bool(warmup_penalty)
        self.p_threshold, self.alpha, self.temperature = p_threshold, alpha, temperature
        self.lambda_u, self.rampup_epochs = float(lambda_u), float(rampup_epochs)
        self.clip_norm, self.guess_bn_mode, self.seed = float(clip_norm), guess_bn_mode, seed
        # The phase being traced (kind, net) and the ramp's clock, set by `fit` per phase.
        self.phase = dividemix_data.Phase("warmup", 0, 1)
        self._clock = [tf.Variable(0.0, trainable=False, name=n)
                       for n in ("ramp_epoch", "ramp_first_step", "ramp_steps")]
        self._functions: dict = {}
        self.trace_counts: dict = {}
        self.epoch_stats: dict[str, float] = {}
        mean = keras.metrics.Mean
        self.loss_tracker = mean(name="loss")
        self.meta_tracker = mean(name=f"meta_{name}")
        self.net_trackers = [{t: mean(name=f"net{k + 1}_{t}") for t in
                              ("loss", "lr", *_TERMS, f"meta_{name}")} for k in (0, 1)]
        self._init_test_metrics(self.loss_tracker)
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.meta_tracker,
                *[t for trackers in self.net_trackers for t in trackers.values()],
                *self.evaluation_metrics()]

    def networks(self):
        return list(zip(self.backbones, self.meta_nets or [None] * len(self.backbones)))

    def predicting(self):
        return list(self.backbones)  # DivideMix predicts with the sum of both logits

    def compile(self, optimizer="sgd", meta_optimizer=None, **kwargs):
        """One optimizer per backbone (and per meta-net): a list of two, or one (an
        instance, name or config) that each network gets its own copy of."""
        if base_model.uses_float16(self.backbones[0]):
            raise ValueError("DivideMixModel has no loss scaling in its step, so it cannot train a "
                             "float16 (mixed_float16) backbone; use mixed_bfloat16 or float32")
        self._compile_optimizers(
            _two(optimizer), None if meta_optimizer is None else _two(meta_optimizer),
            **kwargs)

    def train_on_batch(self, *args, **kwargs):
        """Refused in one line (why, and what to use instead)."""
        del args, kwargs
        raise ValueError("DivideMixModel trains in epochs, each on a co-divide of "
                         "every training sample that the other network scored: it has no "
                         "step of one batch; use fit")

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {"backbones": [serialize(net) for net in self.backbones],
                "meta_nets": (None if self.meta_nets is None
                              else [serialize(net) for net in self.meta_nets]),
                "meta_objective": self.objective_given, "tau": self.tau,
                "meta_grad": self.meta_grad, "meta_scope": self.meta_scope,
                "virtual_step": self.virtual_step, "weight_decay": self.weight_decay,
                "meta_weight_decay": self.meta_weight_decay,
                "warmup_epochs": self.warmup_epochs, "warmup_penalty": self.warmup_penalty,
                "p_threshold": self.p_threshold, "alpha": self.alpha,
                "temperature": self.temperature, "lambda_u": self.lambda_u,
                "rampup_epochs": self.rampup_epochs, "clip_norm": self.clip_norm,
                "guess_bn_mode": self.guess_bn_mode, "seed": self.seed,
                "output_activation": self.output_activation, **self.profile_config(),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        backbones = [deserialize(net) for net in config.pop("backbones")]
        meta_nets = config.pop("meta_nets")
        if meta_nets is not None:
            meta_nets = [deserialize(net) for net in meta_nets]
        extras = cls.pop_user_extras(config)
        return cls(backbones, meta_nets, **config).restore_user_extras(extras)

    def checkpoint_parts(self) -> dict:
        """The base model's parts and the state of each VRINet's noise generator (a
        SeedGenerator is not tracked by tf.train.Checkpoint)."""
        parts = super().checkpoint_parts()
        for k, meta_net in enumerate(self.meta_nets or ()):
            noise = getattr(meta_net, "noise", None)  # a meta-net's noise generator, if any
            if noise is not None:
                parts[f"meta_noise{k + 1}"] = noise.state
        return parts

    # ---------------------------------------------------------------- the epochs
    def fit(self, x=None, y=None, *, epochs: int = 1, initial_epoch: int = 0,
            callbacks: Sequence[keras.callbacks.Callback] | None = None,
            validation_data=None, validation_split: float = 0.0, verbose="auto",
            batch_size: int = 64, meta_size: int = 1000, meta_batch_size: int = 100,
            augment: str = "none", seed: int = 0, sample_weight=None, class_weight=None,
            **kwargs):
        """Trains from `initial_epoch` to `epochs` on a user's data or on `Streams`.

        x may be inputs [N, ...] with labels y ([N], [N, 1] or one-hot [N, K]), a batched
        tf.data.Dataset of (inputs, labels) (read into memory once: the co-divide scores
        every sample every epoch), or a `streams.Streams` (the command line's). For user
        data the streams are built here (`streams.from_user_data`): `batch_size` rows per
        part, each network's own label-free meta set of `meta_size` random samples,
        `augment` in the inputs' own pixel range. sample_weight and class_weight are
        refused: DivideMix weighs samples by its own division.

        Each DivideMix epoch is one Keras epoch whose length follows that epoch's
        division; the phase's train function (one per kind and network, each traced once)
        is switched in at the phase boundary. `callbacks` see one training run (one
        on_train_begin / on_train_end) and one Keras epoch per DivideMix epoch, with
        validation metrics in the epoch logs; keras.callbacks.BackupAndRestore resumes at
        its epoch. Returns the History of all epochs.
        """
        unknown = sorted(set(kwargs) - _PASSED_ON)
        if unknown:
            raise ValueError(f"DivideMixModel.fit does not take {unknown[0]} (an epoch's "
                             "length follows its division)")
        if sample_weight is not None or class_weight is not None:
            raise ValueError("DivideMixModel.fit takes no sample_weight or class_weight: "
                             "DivideMix weighs samples by its own co-divide")
        if hasattr(x, "dividemix_epoch"):  # a `streams.Streams` (the command line's)
            streams = x
            validation = validation_data
        else:
            prepared = dividemix_data.from_user_data(
                x, y, num_classes=self.num_classes, with_meta=self.meta_nets is not None,
                batch_size=batch_size, meta_size=meta_size, meta_batch_size=meta_batch_size,
                seed=seed, augment=augment, validation_split=validation_split,
                validation_data=validation_data)
            streams, validation = prepared.streams, prepared.validation_data
            self.input_profile = prepared.profile
        verbose = 1 if verbose == "auto" else int(verbose)
        run = keras.callbacks.CallbackList(list(callbacks or []), add_history=True,
                                           add_progbar=False, model=self, epochs=epochs,
                                           verbose=verbose)
        self.stop_training = False
        run.on_train_begin()
        start = self._initial_epoch or initial_epoch  # set by BackupAndRestore
        self._initial_epoch = None
        logs = {}
        for epoch in range(start, epochs):
            if epoch < self.warmup_epochs:
                plan = streams.warmup_epoch(epoch)
            else:
                probs = streams.clean_probabilities(self.backbones, epoch)
                plan = streams.dividemix_epoch(
                    epoch, dividemix.co_divide(probs, threshold=self.p_threshold))
            self.epoch_stats = plan.stats
            phases = _Phases(plan.phases, epoch)
            phases.set_model(self)
            phases.select(0)
            relay = _Relay(run, epochs if verbose else 0)
            super().fit(plan.stream, initial_epoch=epoch, epochs=epoch + 1,
                        steps_per_epoch=plan.steps, callbacks=[phases, relay],
                        validation_data=validation, verbose=0, shuffle=False, **kwargs)
            logs = relay.logs
            if self.stop_training:
                break
        run.on_train_end(logs)
        self.history = run._history  # pylint: disable=protected-access
        return self.history

    def select_phase(self, phase: dividemix_data.Phase, epoch: int) -> None:
        """Makes `phase` the one `train_function` runs and starts the ramp's clock."""
        optimizer = self.net_optimizers[phase.net]
        self._clock[0].assign(float(epoch))
        self._clock[1].assign(float(optimizer.iterations.numpy()))
        self._clock[2].assign(float(phase.steps))
        key = (phase.kind, phase.net)
        self.phase = phase
        if key not in self._functions:
            self.make_train_function(force=True)
            self._functions[key] = self.train_function
        self.train_function = self._functions[key]

    # ---------------------------------------------------------------- one step
    def train_step(self, data):
        key = (self.phase.kind, self.phase.net)
        self.trace_counts[key] = self.trace_counts.get(key, 0) + 1  # Python: per trace
        k = self.phase.net
        if self.phase.kind == "warmup":
            return self._log(k, self._warmup_step(k, data["train"]))
        x, u = data["labeled"], data["unlabeled"]
        mixed = self._mixed_batch(k, x, u, self._targets(k, x, u))
        lam = self._lambda_u(k)
        fwd = virtual.train_forward(self.backbones[k], mixed.images)
        meta_loss = None
        if self.meta_nets is not None:
            meta_loss = self._meta_step(k, mixed, data["meta"], fwd, lam)
        terms, regularizer = self._actual_step(k, mixed, fwd, lam)
        return self._log(k, terms.total, terms=terms, lam=lam, regularizer=regularizer,
                         meta_loss=meta_loss)

    def _warmup_step(self, k: int, batch: dict) -> tf.Tensor:
        """CE (+ negative entropy for asymmetric noise), no clip, no meta step."""
        net = self.backbones[k]
        with tf.GradientTape() as tape:
            logits, _ = net(batch["image"], training=True)
            loss = distribute.global_mean(objectives.per_sample_ce(logits, batch["label"]))
            if self.warmup_penalty:
                loss += dividemix.negative_entropy(logits)
            regularization = virtual.regularization_loss(net)
            if regularization is not None:
                loss += tf.cast(regularization, loss.dtype)
        loss_scaling.apply(self.net_optimizers[k], tape.gradient(loss, net.trainable_variables),
                           net.trainable_variables, weight_decay=self.weight_decay)
        return loss

    def _targets(self, k: int, x: dict, u: dict):
        """(t_x, t_u): co-refinement and co-guessing, forwards in
        DivideMix's order; N in train mode (BN statistics updated) unless
        guess_bn_mode='inference', P always in inference mode."""
        own, other = self.backbones[k], self.backbones[1 - k]
        training = self.guess_bn_mode == "train"

        def probs(net, images, mode):
            return tf.stop_gradient(tf.nn.softmax(net(images, training=mode)[0], axis=-1))

        own_u = [probs(own, u[key], training) for key in ("image", "image2")]
        other_u = [probs(other, u[key], False) for key in ("image", "image2")]
        own_x = [probs(own, x[key], training) for key in ("image", "image2")]
        t_u = dividemix.co_guess(*own_u, *other_u, temperature=self.temperature)
        t_x = dividemix.co_refine(*own_x, x["label"], x["prob"], temperature=self.temperature)
        return t_x, t_u

    def _mixed_batch(self, k: int, x: dict, u: dict, targets) -> MixedBatch:
        """Mixup over the global batch (every replica draws the same l and permutation
        from (seed, net, iteration)) and this replica's rows of it."""
        t_x, t_u = targets
        inputs, rows = dividemix.global_layout([x["image"], x["image2"], u["image"],
                                                u["image2"]])
        soft, _ = dividemix.global_layout([t_x, t_x, t_u, t_u])
        step = tf.cast(self.net_optimizers[k].iterations, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), 2 * step + k])
        lam, permutation = dividemix.mix_draw(seed, rows=tf.shape(inputs)[0],
                                              alpha=self.alpha, dtype=inputs.dtype)
        images, mixed_targets = dividemix.mixup(inputs, soft, lam=lam,
                                                permutation=permutation, rows=rows)
        return MixedBatch(images, mixed_targets, 2 * int(x["image"].shape[0]), rows)

    def _lambda_u(self, k: int) -> tf.Tensor:
        """lambda(t), t = epoch + the phase's step fraction."""
        epoch, first, steps = (c.read_value() for c in self._clock)
        t = epoch + (tf.cast(self.net_optimizers[k].iterations, tf.float32) - first) / steps
        return dividemix.lambda_ramp(t, lambda_u=self.lambda_u, warmup=self.warmup_epochs,
                                     rampup=self.rampup_epochs)

    def loss_terms(self, k: int, logits, features, mixed: MixedBatch, lam, *,
                   regularize: bool = False):
        """(LossTerms, the meta-net's weights ([n] or [n, K]) or None, its regularizer or
        None) of the mixed batch: L_x + lambda L_u as network k's meta-net weights its
        rows (VRI rectifies each row's logits, a fresh eps per call; WNet weights each
        row's term), plus the penalty on the raw logits. The logged l_x and l_u are those
        of the logits the meta-net's loss saw (rectified for VRI)."""
        if self.meta_nets is None:
            terms = dividemix.mixmatch_loss(logits, logits, mixed.targets,
                                            num_labeled=mixed.num_labeled, lambda_u=lam)
            return terms, None, None
        seen = []  # the row terms of the logits the meta-net weighs, kept for the logs

        def rows_of(weighed):  # [n, K] -> [n], whose global mean is L_x + lambda L_u
            seen.append(dividemix.row_terms(weighed, mixed.targets,
                                            num_labeled=mixed.num_labeled))
            return dividemix.scaled_rows(*seen[-1], lambda_u=lam)

        labels = tf.argmax(mixed.targets, axis=-1, output_type=tf.int32)  # VRI embeds it
        weighted = self.meta_nets[k].weighted_loss(
            logits, features, labels, regularize=regularize, per_sample_loss=rows_of,
            rows=mixed.rows)
        logged = dividemix.loss_of_terms(*seen[-1], logits, lambda_u=lam)
        terms = logged._replace(total=weighted.loss + logged.penalty)
        return terms, weighted.weights, weighted.regularizer if regularize else None

    def _training_loss(self, k: int, mixed: MixedBatch, lam) -> virtual.TrainingLoss:
        """The weighted MixMatch loss as the hypergradient needs it; the meta-net's
        regularizer (VRI's KL) is not part of any objective (it is inert in the authors'
        code: ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py: meta_step())."""
        def fn(logits, features, regularize=True):
            del regularize
            terms, weights, _ = self.loss_terms(k, logits, features, mixed, lam)
            return objectives.WeightedLoss(terms.total, weights, tf.zeros([], terms.total.dtype))
        return virtual.TrainingLoss(fn, self.meta_nets[k].trainable_variables)

    def _meta_step(self, k: int, mixed: MixedBatch, meta_batch: dict, fwd, lam) -> tf.Tensor:
        """Steps 3-4: the hypergradient of CLID(theta') through the virtual step, then phi."""
        step = lookahead.build(self.virtual_step, self.net_optimizers[k],
                               weight_decay=self.weight_decay)
        result = virtual.hypergradient(
            self.backbones[k], self._training_loss(k, mixed, lam), mixed.images, meta_batch,
            step=step, meta_objective=self.meta_objective, meta_grad=self.meta_grad,
            scope=self.meta_scope, fwd=fwd)
        loss_scaling.apply(self.meta_optimizers[k], result.meta_grads,
                           self.meta_nets[k].trainable_variables,
                           weight_decay=self.meta_weight_decay)
        return result.meta_loss

    def _actual_step(self, k: int, mixed: MixedBatch, fwd, lam):
        """Step 5: the updated rectifier on the recorded forward; clip, update theta, BN."""
        with tf.GradientTape() as tape:
            tape.watch(fwd.logits)
            terms, _, regularizer = self.loss_terms(k, fwd.logits, fwd.features, mixed, lam,
                                                    regularize=True)
        dz = tape.gradient(terms.total, fwd.logits)
        grads, _ = dividemix.clip_by_global_norm(virtual.training_gradient(fwd, dz),
                                                 self.clip_norm)
        if fwd.regularization is not None:  # reported in the loss, as Keras does
            terms = terms._replace(total=terms.total + tf.cast(
                fwd.regularization, terms.total.dtype) / distribute.num_replicas())
        net = self.backbones[k]
        loss_scaling.apply(self.net_optimizers[k], grads, net.trainable_variables,
                           weight_decay=self.weight_decay)
        for variable, value in zip(net.non_trainable_variables, fwd.non_trainable):
            variable.assign(value)
        if regularizer is not None:  # logged only (this replica's share, as the loss)
            regularizer = tf.stop_gradient(regularizer)
        return terms, regularizer

    # ---------------------------------------------------------------- monitoring
    def _log(self, k: int, loss, *, terms=None, lam=None, regularizer=None, meta_loss=None):
        """The step's metrics as global values: net k's and the totals over both nets."""
        trackers = self.net_trackers[k]
        shares = {"loss": loss}  # this replica's shares: summed over replicas
        if terms is not None:
            shares.update(l_x=terms.l_x, l_u=terms.l_u, penalty=terms.penalty)
        if regularizer is not None:
            shares["meta_regularizer"] = regularizer
        values = {name: distribute.global_sum(v) for name, v in shares.items()}
        values["lr"] = self.net_optimizers[k].learning_rate  # the same on every replica
        if lam is not None:
            values["lambda_u"] = lam
        if meta_loss is not None:
            values[f"meta_{self.meta_objective_name}"] = distribute.global_sum(meta_loss)
            self.meta_tracker.update_state(values[f"meta_{self.meta_objective_name}"])
        self.loss_tracker.update_state(values["loss"])
        for name, value in values.items():
            trackers[name].update_state(value)
        updated = [self.loss_tracker, *(trackers[name] for name in values)]
        if meta_loss is not None:
            updated.append(self.meta_tracker)
        return {m.name: m.result() for m in updated}

    def epoch_logs(self) -> dict[str, float]:
        """Every train metric updated this epoch, and the epoch's division statistics."""
        trained = self.metrics[:len(self.metrics) - len(self.evaluation_metrics())]
        logs = {m.name: float(m.result()) for m in trained
                if float(tf.convert_to_tensor(m.count)) > 0}  # SyncOnRead under a strategy
        # every metric some phase reports, NaN in the epochs whose phases did not (the
        # DivideMix terms in a warm-up epoch): History and CSVLogger keep their columns
        reported = ({"meta_regularizer", f"meta_{self.meta_objective_name}"} if self.meta_nets
                    else set())
        reported |= {"l_x", "l_u", "penalty", "lambda_u"}
        for k, trackers in enumerate(self.net_trackers):
            for term in reported:
                logs.setdefault(trackers[term].name, float("nan"))
        if self.meta_nets:
            logs.setdefault(self.meta_tracker.name, float("nan"))
        return {**logs, **self.epoch_stats}


class _Phases(keras.callbacks.Callback):
    """Switches the train function at the phase boundaries of one epoch and puts the
    epoch's metrics and division statistics into its logs (first in the callback list)."""

    def __init__(self, phases: Sequence[dividemix_data.Phase], epoch: int):
        super().__init__()
        self.phases, self.epoch = list(phases), epoch
        self.starts = {sum(p.steps for p in self.phases[:i]): i
                       for i in range(len(self.phases))}

    def select(self, index: int) -> None:
        self.model.select_phase(self.phases[index], self.epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if batch > 0 and batch in self.starts:
            self.select(self.starts[batch])

    def on_train_batch_end(self, batch, logs=None):
        if batch == sum(p.steps for p in self.phases) - 1:  # before validation resets them
            self.training_logs = self.model.epoch_logs()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(getattr(self, "training_logs", None) or self.model.epoch_logs())


class _Relay(keras.callbacks.Callback):
    """Passes one inner Keras fit's epoch, batch and validation events on to the user's
    callbacks of the whole run (`run`, a CallbackList that saw on_train_begin once), and
    prints one line per epoch when `epochs` > 0."""

    SHOWN = ("loss", "meta_clid", "net1_labeled", "net2_labeled", "test_accuracy",
             "val_accuracy")

    def __init__(self, run: keras.callbacks.CallbackList, epochs: int):
        super().__init__()
        self.run, self.epochs, self.logs = run, epochs, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.run.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.run.on_epoch_end(epoch, logs)
        self.logs = dict(logs or {})
        if self.epochs:
            shown = {k: logs[k] for k in self.SHOWN if k in (logs or {})}
            print(f"epoch {epoch + 1}/{self.epochs}: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), flush=True)

    def on_train_batch_begin(self, batch, logs=None):
        self.run.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.run.on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        self.run.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.run.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.run.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.run.on_test_batch_end(batch, logs)


_PASSED_ON = {"validation_steps", "validation_batch_size", "validation_freq"}


class EpochLearningRate(keras.callbacks.Callback):
    """Sets every optimizer's learning rate to schedule(epoch) when an epoch begins, as
    DivideMix writes lr_e into both SGDs (its epochs have no fixed number of steps, so
    an iteration-based schedule cannot tell the epoch)."""

    def __init__(self, schedule: Callable[[int], float],
                 optimizers: Sequence[keras.optimizers.Optimizer]):
        super().__init__()
        self.schedule, self.optimizers = schedule, list(optimizers)

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer in self.optimizers:
            optimizer.learning_rate = float(self.schedule(epoch))


def _two(spec) -> list:
    """Two optimizers from a list of two, or from one spec: a name or config gives two
    new ones, an instance itself and a fresh copy of it."""
    if isinstance(spec, (list, tuple)):
        return list(spec)
    if isinstance(spec, keras.optimizers.Optimizer):
        return [spec, spec.__class__.from_config(spec.get_config())]
    return [spec, spec]  # resolved one by one: two distinct optimizers
