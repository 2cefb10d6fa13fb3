"""FixMatch and FlexMatch on a few noisy labels, with a loss-net trained by CLID
(as in the authors' fork of USB: ruofanhu/CLID-MU@5cd0608,
semi/semilearn/algorithms/fixmatch/fixmatch_lossnet.py and flexmatch/flexmatch_lossnet.py).

One train_step per (labeled, unlabeled, meta) batch:
  1. virtual step  theta' = U(theta, grad_theta mean_i w_i CE_i)  on the LABELED batch
     only, w = loss_net(stop_grad(CE)) unnormalised; U = a differentiable copy of the
     real SGD-Nesterov step (momentum slots, current lr, decay without BN and biases)
  2. meta step     phi <- meta_optimizer(grad_phi CLID(theta'))   on the meta batch
                   (weak || strong views of unlabeled images: 2n rows; or a weak view)
  3. actual step   one forward of cat(x_lb, x_weak, x_strong) in training mode,
                   L = mean_i w_i CE_i  (w from the UPDATED loss-net, no gradient to phi)
                       + lambda_u * L_u,
                   then the EMA of the parameters.
Without a loss-net (or during a warm-up) w = 1: plain FixMatch / FlexMatch. The unlabeled
batch never reaches steps 1 and 2. The loss-net is used only through the meta-net
contract (`weighted_loss`): the authors' is WeightNet(normalize=False); any other
meta-net (VRI rectifying the labeled logits) weights the supervised term its own way.

L_u (`unsupervised_loss`) takes hard pseudo-labels argmax p_weak where max p_weak reaches
the threshold and averages CE(z_strong, pseudo) * mask over ALL uB rows. The threshold is
`p_cutoff` (FixMatch) or FlexMatch's per-class p_cutoff * b_c / (2 - b_c)
(`flexmatch_thresholds`), from the table of each unlabeled sample's last confident
prediction (`flexmatch_select`).

The EMA network (`ema_backbone`, the authors' ema_model: ruofanhu/CLID-MU@5cd0608,
semi/semilearn/core/hooks/ema.py: EMAHook) holds
ema <- d * ema + (1 - d) * theta of the parameters (trainable variables only; it starts at
the initial weights) and a copy of the live BN statistics, both after every step. It is
what is evaluated, selected and exported; the live network is never swapped.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import lookahead
from clid_tf.core import loss_scaling
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.trainers import base_model
from clid_tf.trainers.fixmatch import streams as ssl_streams

ALGORITHMS = ("fixmatch", "flexmatch")
NOT_SELECTED = -1  # FlexMatch table entry of an unlabeled sample never confidently predicted


# ---------------------------------------------------------------- loss parts (pure)
class UnsupervisedTerm(NamedTuple):
    """FixMatch's consistency term of one unlabeled batch (this replica's rows)."""
    loss: tf.Tensor        # this replica's share of sum_i mask_i CE(z_s_i, pseudo_i) / uB
    mask: tf.Tensor        # float [uB]: whether the weak view's confidence passed
    pseudo: tf.Tensor      # int32 [uB]: argmax of the weak view's probabilities
    confidence: tf.Tensor  # float [uB]: max of the weak view's probabilities


def unsupervised_loss(logits_weak: tf.Tensor, logits_strong: tf.Tensor, *,
                      thresholds) -> UnsupervisedTerm:
    """FixMatch's unlabeled loss with hard pseudo-labels.

    Args:
      logits_weak: float [uB, K] of the weak views; no gradient flows into them.
      logits_strong: float [uB, K] of the strong views of the same images.
      thresholds: the confidence threshold, a scalar (FixMatch's p_cutoff) or float [K]
        per class (FlexMatch), taken at each sample's pseudo-label.

    Returns:
      UnsupervisedTerm; `loss` divides by the global uB, not by the mask's sum.
    """
    probs = tf.nn.softmax(tf.stop_gradient(logits_weak), axis=-1)
    confidence = tf.reduce_max(probs, axis=-1)
    pseudo = tf.argmax(probs, axis=-1, output_type=tf.int32)
    thresholds = tf.cast(thresholds, probs.dtype)
    cut = thresholds if thresholds.shape.rank == 0 else tf.gather(thresholds, pseudo)
    mask = tf.cast(confidence >= cut, probs.dtype)
    loss = distribute.global_mean(objectives.per_sample_ce(logits_strong, pseudo) * mask)
    return UnsupervisedTerm(loss, mask, pseudo, confidence)


def flexmatch_thresholds(selected: tf.Tensor, *, num_classes: int, p_cutoff: float,
                         warmup: bool = True) -> tf.Tensor:
    """FlexMatch's per-class thresholds.

    b_c = count(table == c) / max over the counts, the count of NOT_SELECTED included
    (`warmup`, the authors' thresh_warmup) or not; b = 0 while every entry is
    NOT_SELECTED. Threshold_c = p_cutoff * b_c / (2 - b_c) (the convex mapping; both in
    ruofanhu/CLID-MU@5cd0608, semi/semilearn/algorithms/flexmatch/utils.py:
    FlexMatchThresholdingHook).

    Args:
      selected: int [U] the table, NOT_SELECTED or a class per unlabeled sample.
    Returns:
      float32 [K].
    """
    counts = tf.math.bincount(tf.cast(selected, tf.int32) + 1, minlength=num_classes + 1,
                              maxlength=num_classes + 1, dtype=tf.float32)
    per_class = counts[1:]
    denominator = tf.reduce_max(counts) if warmup else tf.reduce_max(per_class)
    any_selected = counts[0] < tf.cast(tf.size(selected), tf.float32)
    beta = tf.where(any_selected, tf.math.divide_no_nan(per_class, denominator), 0.0)
    return p_cutoff * beta / (2.0 - beta)


def flexmatch_select(selected: tf.Tensor, positions: tf.Tensor, confidence: tf.Tensor,
                     pseudo: tf.Tensor, *, p_cutoff: float) -> tf.Tensor:
    """The table after one batch: each sample whose confidence reaches p_cutoff records
    its pseudo-label (as FlexMatch); nothing changes when none does. A sample that occurs
    twice in the batch keeps its last occurrence's label.

    Args:
      selected: int [U] the table; positions: int [b] the batch's positions in it;
      confidence: float [b]; pseudo: int [b].
    Returns:
      int [U], the new table.
    """
    chosen = confidence >= tf.cast(p_cutoff, confidence.dtype)
    where = tf.boolean_mask(positions, chosen)
    labels = tf.cast(tf.boolean_mask(pseudo, chosen), selected.dtype)
    unique, occurrence = tf.unique(where)
    last = tf.math.unsorted_segment_max(tf.range(tf.size(where)), occurrence,
                                        tf.size(unique))
    return tf.tensor_scatter_nd_update(selected, unique[:, None], tf.gather(labels, last))


def meta_images(meta: dict) -> tf.Tensor:
    """CLID's rows of a meta batch: cat(weak, strong) [2n, ...] of the same n images, or the
    weak view [n, ...] alone."""
    return tf.concat([meta[view] for view in ("weak", "strong") if view in meta], axis=0)


def batch_stats(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean, standard deviation) of per-sample values [b] over the global batch."""
    mean = distribute.global_sum(distribute.global_mean(values))
    square = distribute.global_sum(distribute.global_mean(tf.square(values)))
    return mean, tf.sqrt(tf.maximum(square - tf.square(mean), 0.0))


# ---------------------------------------------------------------- the model
@keras.saving.register_keras_serializable(package="clid_tf")
class FixMatchModel(base_model.TrainerModel):
    """FixMatch or FlexMatch, plain or with a loss-net trained by CLID (module docstring).

    Data per step: {'labeled': {'image', 'label', optional 'is_noisy'}, 'unlabeled':
    {'weak', 'strong', 'position' (FlexMatch)}, 'meta': {'weak'[, 'strong']} (with a
    loss-net)}, as `clid_tf.trainers.fixmatch.streams.ssl_stream` makes them. 'is_noisy' is ground
    truth for monitoring only.
    """

    def __init__(self, backbone: keras.Model, loss_net: keras.Model | None = None, *,
                 algorithm: str = "fixmatch", num_unlabeled: int = 0,
                 lambda_u: float = 1.0, p_cutoff: float = 0.95, thresh_warmup: bool = True,
                 ema_decay: float = 0.999,
                 meta_objective: str | Callable[..., tf.Tensor] = "clid", tau: float = 0.1,
                 meta_grad: str = "recompute", meta_scope: str = "full",
                 virtual_step: str = "optimizer", weight_decay: float = 1e-4,
                 meta_weight_decay: float = 5e-4,
                 no_decay: Sequence[keras.Variable] = (), **kwargs):
        """
        Args:
          backbone: images -> (logits [B, K], features [B, d]) (`user_models.as_classifier`).
          loss_net: a meta-net weighting the supervised term (the authors':
            `WeightNet(normalize=False)`), or None (plain FixMatch).
          algorithm: 'fixmatch' or 'flexmatch'.
          num_unlabeled: U, the size of FlexMatch's table (its 'position' range).
          lambda_u: weight of the unlabeled term.
          p_cutoff: confidence threshold (FlexMatch: of the best-learnt class).
          thresh_warmup: FlexMatch's normaliser counts the unselected samples too.
          ema_decay: d of the parameter EMA.
          meta_objective, tau: the loss-net's meta objective (`objectives.meta_objective`).
          meta_grad, meta_scope: how the hypergradient is computed (`clid_tf.core.virtual`).
          virtual_step: 'optimizer' (the real optimizer's next update) or 'sgd'.
          weight_decay, meta_weight_decay: coupled L2 of theta and phi.
          no_decay: backbone variables without weight decay (`lookahead.bn_and_bias`).
        """
        super().__init__(**kwargs)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")
        base_model.check_virtual_step(virtual_step)
        base_model.check_meta_net(loss_net, "loss_net")
        if algorithm == "flexmatch" and num_unlabeled < 1:
            raise ValueError("flexmatch needs num_unlabeled, the size of its table (the "
                             "number of unlabeled images fit will get)")
        self.backbone = base_model.checked_classifier(backbone, meta_scope)
        self.ema_backbone = keras.models.clone_model(self.backbone)
        self.ema_backbone.set_weights(self.backbone.get_weights())
        self.ema_backbone.trainable = False
        self.ema_backbone.output_activation = self.backbone.output_activation
        self.meta_net = loss_net  # the name MetaViews and WarmUp look for
        self.algorithm = algorithm
        self.lambda_u, self.p_cutoff = float(lambda_u), float(p_cutoff)
        self.thresh_warmup, self.ema_decay = bool(thresh_warmup), float(ema_decay)
        self.objective_given = base_model.objective_config(meta_objective)
        self.meta_objective_name = None
        self.tau = float(tau)
        if loss_net is not None:  # plain FixMatch (no loss-net) has no meta objective
            meta_objective, self.meta_objective_name = base_model.meta_objective_of(
                meta_objective, tau=tau)
        self.meta_objective = meta_objective
        self.meta_grad, self.meta_scope, self.virtual_step = meta_grad, meta_scope, virtual_step
        self.weight_decay, self.meta_weight_decay = float(weight_decay), float(meta_weight_decay)
        self.no_decay = list(no_decay)
        self.meta_active = loss_net is not None
        self.selected_label = None
        if algorithm == "flexmatch":
            self.selected_label = keras.Variable(
                np.full(int(num_unlabeled), NOT_SELECTED, np.int32), dtype="int32",
                trainable=False, aggregation="only_first_replica", name="selected_label")
        names = ["loss", "loss_sup", "loss_unsup", "mask_ratio", "lr"]
        if loss_net is not None:
            names += ["meta_clid", "meta_lr", "weight_mean", "weight_std", "weight_clean",
                      "weight_noisy"]
        if algorithm == "flexmatch":
            names += ["threshold_min", "threshold_mean", "threshold_max"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._init_test_metrics(self.trackers["loss"])
        self.built = True

    @property
    def metrics(self):
        return [*self.trackers.values(), *self.evaluation_metrics()]

    def networks(self):
        return [(self.backbone, self.meta_net)]

    def predicting(self):
        # the authors' ema_model (ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/hooks/ema.py)
        return [self.ema_backbone]

    @property
    def meta_optimizer(self):
        """The loss-net's optimizer (None without a loss-net)."""
        return self.meta_optimizers[0]

    def compile(self, optimizer="sgd", meta_optimizer=None, **kwargs):
        """optimizer (theta) and meta_optimizer (the loss-net's): instances, names or
        configs, as keras.Model.compile takes them."""
        if base_model.uses_float16(self.backbone):
            raise ValueError("FixMatchModel has no loss scaling in its step, so it cannot train a "
                             "float16 (mixed_float16) backbone; use mixed_bfloat16 or float32")
        self._compile_optimizers([optimizer], [meta_optimizer], **kwargs)

    def set_meta_active(self, active: bool) -> None:
        """Loss-net weighting and meta steps on or off (off: w = 1); retraces on next fit."""
        self.meta_active = bool(active) and self.meta_net is not None
        self.train_function = None

    def checkpoint_parts(self) -> dict:
        """The trackables a resumable checkpoint holds: the base model's, the EMA network
        and FlexMatch's table."""
        parts = {**super().checkpoint_parts(), "ema_backbone": self.ema_backbone}
        if self.selected_label is not None:
            parts["selected_label"] = self.selected_label
        return parts

    def fit(self, x=None, y=None, *, unlabeled=None, epochs: int = 1,
            steps_per_epoch: int | None = None, batch_size: int = 64, uratio: int = 7,
            meta_size: int = 1000, meta_batch_size: int = 100,
            meta_source: str = "unlabeled", include_labeled_in_unlabeled: bool = False,
            strong_augment: str = "randaugment", flip: bool = True, seed: int = 0,
            sample_weight=None, class_weight=None, validation_split: float = 0.0,
            validation_data=None, initial_epoch: int = 0, callbacks=None, **kwargs):
        """keras.Model.fit on a few labeled images plus unlabeled ones, or on a ready stream.

        x may be labeled images [N, H, W, C] with labels y ([N], [N, 1] or one-hot), or a
        batched Dataset of (images, labels); `unlabeled` images as an array or a Dataset
        (both read into memory), or x may be the stream `streams.ssl_stream` makes (the
        command line's). For user data: `batch_size` labeled and `uratio * batch_size`
        unlabeled images per step, weak and strong views in the images' own pixel range
        (`strong_augment`: 'randaugment', USB's RandAugment(3, 5) as in ruofanhu/CLID-MU@5cd0608,
        semi/semilearn/datasets/augmentation/randaugment.py, or 'strong', FixMatch's
        RandAugmentMC + Cutout; `flip=False` for images that must not be mirrored), an
        epoch of `steps_per_epoch` steps (default: one pass over the unlabeled images), the
        loss-net's label-free meta set of `meta_size` random unlabeled images in both
        views (`meta_source='labeled'`: labeled ones, weak view). sample_weight and
        class_weight scale the supervised term; initial_epoch and
        keras.callbacks.BackupAndRestore continue exactly. Every other argument is
        keras.Model.fit's.
        """
        callbacks = list(callbacks or [])
        if not _is_ssl_stream(x):
            if meta_source not in ("unlabeled", "labeled"):
                raise ValueError(f"meta_source must be 'unlabeled' or 'labeled', got "
                                 f"{meta_source!r}")
            first = base_model.backup_epoch(callbacks)
            prepared = ssl_streams.from_user_data(
                x, y, unlabeled, num_classes=self.num_classes,
                with_meta=self.meta_net is not None, batch_size=batch_size, uratio=uratio,
                meta_size=meta_size, meta_batch_size=meta_batch_size, meta_source=meta_source,
                include_labeled=include_labeled_in_unlabeled, seed=seed,
                steps_per_epoch=steps_per_epoch,
                first_epoch=initial_epoch if first is None else first,
                strong=strong_augment, flip=flip,
                with_positions=self.selected_label is not None, sample_weight=sample_weight,
                class_weight=class_weight, validation_split=validation_split,
                validation_data=validation_data)
            if (self.selected_label is not None
                    and int(self.selected_label.shape[0]) != prepared.num_unlabeled):
                raise ValueError(f"this FlexMatch model was built for num_unlabeled="
                                 f"{int(self.selected_label.shape[0])} but fit got "
                                 f"{prepared.num_unlabeled} unlabeled images: build it with "
                                 f"num_unlabeled={prepared.num_unlabeled}")
            base_model.check_takes_sample_weights(self.meta_net, prepared.stream)
            x, y = prepared.stream, None
            validation_data, self.input_profile = prepared.validation_data, prepared.profile
            steps_per_epoch = prepared.steps
        elif sample_weight is not None or class_weight is not None or validation_split:
            raise ValueError("a ready training stream carries its own weights; "
                             "sample_weight, class_weight and validation_split are for user "
                             "data")
        kwargs["shuffle"] = False  # streams shuffle themselves (seeded per epoch)
        if self.meta_net is not None:  # epochs without the meta step report NaN for these
            phase = ["meta_clid", "meta_lr", "weight_mean", "weight_std"]
            if "is_noisy" in x.element_spec["labeled"]:
                phase += ["weight_clean", "weight_noisy"]
            callbacks = [base_model.EveryEpochMetric(phase), *callbacks]
        return super().fit(x, y, epochs=epochs, steps_per_epoch=steps_per_epoch,
                           validation_data=validation_data, initial_epoch=initial_epoch,
                           callbacks=callbacks, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        """Refused in one line (why, and what to use instead)."""
        del args, kwargs
        raise ValueError("FixMatchModel's step needs labeled, unlabeled (weak "
                         "and strong views) and meta batches that fit builds from your data: "
                         "use fit (steps_per_epoch=1 for a single step)")

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "loss_net": (None if self.meta_net is None
                             else keras.saving.serialize_keras_object(self.meta_net)),
                "algorithm": self.algorithm,
                "num_unlabeled": (0 if self.selected_label is None
                                  else int(self.selected_label.shape[0])),
                "lambda_u": self.lambda_u, "p_cutoff": self.p_cutoff,
                "thresh_warmup": self.thresh_warmup, "ema_decay": self.ema_decay,
                "meta_objective": self.objective_given, "tau": self.tau,
                "meta_grad": self.meta_grad, "meta_scope": self.meta_scope,
                "virtual_step": self.virtual_step, "weight_decay": self.weight_decay,
                "meta_weight_decay": self.meta_weight_decay,
                "output_activation": self.output_activation, **self.profile_config(),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        loss_net = config.pop("loss_net")
        if loss_net is not None:
            loss_net = keras.saving.deserialize_keras_object(loss_net)
        extras = cls.pop_user_extras(config)
        return cls(backbone, loss_net, **config).restore_user_extras(extras)

    # ---------------------------------------------------------------- the algorithm
    def train_step(self, data):
        labeled, unlabeled = data["labeled"], data["unlabeled"]
        lr = self.optimizer.learning_rate  # the current scheduled lr, before this update
        meta_loss = self._meta_step(labeled, data["meta"]) if self.meta_active else None
        weights, terms, thresholds, logits = self._actual_step(labeled, unlabeled)
        self._update_ema()
        logs = self._log(terms, lr, meta_loss=meta_loss, weights=weights, labeled=labeled,
                         thresholds=thresholds)
        return {**logs, **self.update_user_metrics(labeled["label"], logits,
                                                   labeled.get("sample_weight"))}

    def _meta_step(self, labeled, meta):
        """Virtual and meta step: the hypergradient, then the loss-net update. Returns this
        replica's share of the meta loss."""
        result = self.meta_gradients(labeled, meta)
        loss_scaling.apply(self.meta_optimizer, result.meta_grads,
                           self.meta_net.trainable_variables,
                           weight_decay=self.meta_weight_decay)
        return result.meta_loss

    def meta_gradients(self, labeled: dict, meta: dict) -> virtual.MetaResult:
        """d CLID(theta') / d phi: the virtual step of the LABELED batch's loss-net loss
        through the real optimizer's next update, CLID on the meta batch's views."""
        step = lookahead.build(self.virtual_step, self.optimizer,
                               weight_decay=self.weight_decay, no_decay=self.no_decay)
        return virtual.hypergradient(
            self.backbone, virtual.for_meta_net(self.meta_net, labeled["label"],
                                                labeled.get("sample_weight")),
            labeled["image"], {"image": meta_images(meta)}, step=step,
            meta_objective=self.meta_objective, meta_grad=self.meta_grad,
            scope=self.meta_scope)

    def _actual_step(self, labeled, unlabeled):
        """Actual step: one forward of cat(x_lb, x_w, x_s), L_s + lambda_u L_u, update.
        Returns (weights [B], the loss terms, the thresholds, the labeled logits [B, K])."""
        sizes = [tf.shape(labeled["image"])[0], tf.shape(unlabeled["weak"])[0]]
        images = tf.concat([labeled["image"], unlabeled["weak"], unlabeled["strong"]], axis=0)
        thresholds = self._thresholds()
        theta = self.backbone.trainable_variables
        with tf.GradientTape() as tape:
            logits, features = self.backbone(images, training=True)
            logits_lb, logits_w, logits_s = tf.split(logits, [sizes[0], sizes[1], sizes[1]])
            weights, supervised = self._supervised(logits_lb, features[:sizes[0]], labeled)
            unsup = unsupervised_loss(logits_w, logits_s, thresholds=thresholds)
            loss = supervised + self.lambda_u * unsup.loss
            regularization = virtual.regularization_loss(self.backbone)
            if regularization is not None:
                loss += tf.cast(regularization, loss.dtype)
        loss_scaling.apply(self.optimizer, tape.gradient(loss, theta), theta,
                           weight_decay=self.weight_decay, decayed=lookahead.decay_mask(
                               theta, self.no_decay))
        if self.selected_label is not None:
            positions, confidence, pseudo = distribute.gather(
                (unlabeled["position"], unsup.confidence, unsup.pseudo))
            self.selected_label.assign(flexmatch_select(
                self.selected_label.value, positions, confidence, pseudo,
                p_cutoff=self.p_cutoff))
        return weights, (loss, supervised, unsup), thresholds, logits_lb

    def _supervised(self, logits, features, labeled):
        """(per-sample weights [B], the supervised term L_s): the (updated) loss-net's
        `weighted_loss` of the labeled batch (WNet unnormalised: mean_i w_i CE_i, w from
        the detached CE; any other meta-net its own weighting), its phi not trained by
        this step; without one or while it is off, mean_i CE_i (times the user's sample
        weights)."""
        sample_weight = labeled.get("sample_weight")
        if self.meta_active:
            weighted = self.meta_net.weighted_loss(logits, features, labeled["label"],
                                                   regularize=False,
                                                   **({} if sample_weight is None else
                                                      {"sample_weight": sample_weight}))
            return tf.stop_gradient(weighted.per_sample_weights()), weighted.loss
        losses = objectives.per_sample_ce(logits, labeled["label"])
        if sample_weight is not None:
            losses = losses * tf.cast(sample_weight, losses.dtype)
        return tf.ones_like(losses), distribute.global_mean(losses)

    def _thresholds(self):
        """FixMatch's p_cutoff, or FlexMatch's [K] thresholds from the table as it is."""
        if self.selected_label is None:
            return tf.constant(self.p_cutoff)
        return flexmatch_thresholds(self.selected_label.value, num_classes=self.num_classes,
                                    p_cutoff=self.p_cutoff, warmup=self.thresh_warmup)

    def _update_ema(self):
        """ema <- d ema + (1 - d) theta for the parameters; the buffers (BN statistics)
        copied, so the EMA network is the authors' ema_model after every step
        (ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/hooks/ema.py: EMAHook)."""
        d = self.ema_decay
        for live, average in zip(self.backbone.weights, self.ema_backbone.weights):
            if live.trainable:
                average.assign(d * average.value + (1.0 - d) * live.value)
            else:
                average.assign(live.value)

    # ---------------------------------------------------------------- monitoring
    def _log(self, terms, lr, *, meta_loss, weights, labeled, thresholds):
        loss, supervised, unsup = terms
        values = {"loss": distribute.global_sum(loss),
                  "loss_sup": distribute.global_sum(supervised),
                  "loss_unsup": distribute.global_sum(unsup.loss),
                  "mask_ratio": batch_stats(unsup.mask)[0], "lr": lr}
        if self.selected_label is not None:
            values.update(threshold_min=tf.reduce_min(thresholds),
                          threshold_mean=tf.reduce_mean(thresholds),
                          threshold_max=tf.reduce_max(thresholds))
        if meta_loss is not None:
            values["meta_clid"] = distribute.global_sum(meta_loss)
            values["meta_lr"] = self.meta_optimizer.learning_rate
            values["weight_mean"], values["weight_std"] = batch_stats(weights)
        for name, value in values.items():
            self.trackers[name].update_state(value)
        logged = list(values)
        if meta_loss is not None:  # clean/noisy weights: ground truth, monitoring only
            logged += [m.name for m in self.log_weights(
                {"clean": self.trackers["weight_clean"], "noisy": self.trackers["weight_noisy"]},
                weights, labeled)]
        return {name: self.trackers[name].result() for name in logged}


def _is_ssl_stream(x) -> bool:
    """Whether x is a ready {'labeled', 'unlabeled', ...} stream rather than user data."""
    return (isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, dict)
            and "labeled" in x.element_spec)
