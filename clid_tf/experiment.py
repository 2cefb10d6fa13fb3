"""One training run from plain arguments: the model, its optimisers, data streams and fit.

`clid_tf.splits.prepare` has already checked the input; `train` builds the model, fits it,
and writes TensorBoard events, checkpoints and the SavedModel.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np

from clid_tf import augment as augment_lib
from clid_tf import backbones
from clid_tf import callbacks as callbacks_lib
from clid_tf import data
from clid_tf import distribute
from clid_tf import export as export_lib
from clid_tf import meta_model
from clid_tf import meta_nets
from clid_tf import objectives
from clid_tf import schedules
from clid_tf import selection as selection_lib
from clid_tf import sloss as sloss_lib
from clid_tf import splits
from clid_tf import tb_views
from clid_tf import vri
from clid_tf.splits import Setup


def build_meta_net(kind: str, *, num_classes: int, feature_dim: int, vri_kl: float,
                   seed: int) -> keras.Model:
    """WNet (loss -> weight) or VRI (feature, noisy label -> per-class logit weights)."""
    if kind == "wnet":
        net = meta_nets.WeightNet(seed=seed)
        net(np.zeros([1], np.float32))
        return net
    if kind == "vri":
        return vri.VRINet(num_classes, feature_dim, kl_weight=vri_kl, seed=seed)
    raise ValueError(f"unknown meta-net {kind!r}")


def build_model(setup: Setup, *, backbone: str, method: str, meta_net: str, vri_kl: float,
                tau: float, meta_grad: str, meta_scope: str, weight_decay: float,
                meta_weight_decay: float, seed: int, sync_batchnorm: bool = False,
                mixed_precision: str = "none", virtual_step: str = "sgd",
                meta_every: int = 1) -> meta_model.MetaReweightModel:
    """The classifier wrapped in a MetaReweightModel (no meta-net for method 'ce')."""
    ds = setup.dataset
    net = backbones.build(backbone, num_classes=ds.num_classes,
                          input_shape=ds.x_train.shape[1:], mean=ds.mean, std=ds.std,
                          seed=seed, sync_batchnorm=sync_batchnorm,
                          dtype_policy="float32" if mixed_precision == "none"
                          else mixed_precision)
    if method == "ce":
        return meta_model.MetaReweightModel(net, weight_decay=weight_decay)
    return meta_model.MetaReweightModel(
        net, build_meta_net(meta_net, num_classes=ds.num_classes, feature_dim=net.feature_dim,
                            vri_kl=vri_kl, seed=seed),
        meta_objective=objectives.meta_objective(method, tau=tau),
        meta_objective_name=method, meta_grad=meta_grad, meta_scope=meta_scope,
        virtual_step=virtual_step, meta_every=meta_every, weight_decay=weight_decay,
        meta_weight_decay=meta_weight_decay)


def train(setup: Setup, *, workdir: str, backbone: str, method: str, meta_net: str,
          vri_kl: float, tau: float, meta_grad: str, meta_scope: str, strategy: str,
          jit_compile: bool, mixed_precision: str, augment: str, augment_flip: bool,
          epochs: int, batch_size: int, meta_batch_size: int, steps_per_epoch: int,
          lr: float, momentum: float, weight_decay: float, lr_schedule: str, lr_tmax: int,
          lr_eta_min: float, lr_milestones: Sequence[int], lr_gamma: float, meta_optimizer: str,
          meta_lr: float, meta_weight_decay: float, warmup_epochs: int,
          eval_batch_size: int, select_keep: int, seed: int, verbose: int, export: bool,
          resume: bool = False, virtual_step: str = "sgd", meta_every: int = 1) -> dict:
    """Fits the model (continuing the workdir's last checkpoint if `resume`) and returns the
    results dict (accuracies, noise, history)."""
    ds = setup.dataset
    idx = setup.train_indices
    steps_per_epoch = steps_per_epoch or len(idx) // batch_size
    keras.utils.set_random_seed(seed)
    distribution = distribute.make_strategy(strategy)
    with distribution.scope():
        model = build_model(setup, backbone=backbone, method=method, meta_net=meta_net,
                            vri_kl=vri_kl, tau=tau, meta_grad=meta_grad,
                            meta_scope=meta_scope, weight_decay=weight_decay,
                            meta_weight_decay=meta_weight_decay, seed=seed,
                            sync_batchnorm=distribution.num_replicas_in_sync > 1,
                            mixed_precision=mixed_precision, virtual_step=virtual_step,
                            meta_every=meta_every)
        schedule = schedules.build(lr_schedule, lr, steps_per_epoch=steps_per_epoch,
                                   epochs=epochs, t_max=lr_tmax, eta_min=lr_eta_min,
                                   milestones=lr_milestones, gamma=lr_gamma)
        meta_opt = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[meta_optimizer]
        model.compile(keras.optimizers.SGD(schedule, momentum=momentum),
                      meta_opt(meta_lr) if model.meta_net is not None else None,
                      jit_compile=jit_compile)
    selection = selection_lib.ClidSelection(
        ds.x_train[setup.selection_indices], ds.x_test, ds.y_test,
        batch_size=min(meta_batch_size, len(setup.selection_indices)), tau=tau,
        keep=select_keep, seed=seed, eval_batch_size=eval_batch_size)
    run_state = callbacks_lib.RunState(os.path.join(workdir, "checkpoints"), model, selection)
    start_epoch = run_state.restore() if resume else 0
    if start_epoch:
        print(f"resuming after epoch {start_epoch} of {epochs}")
    streams = _Streams(setup, method=method, batch_size=batch_size, meta_batch_size=meta_batch_size,
                       steps_per_epoch=steps_per_epoch, eval_batch_size=eval_batch_size,
                       augment=_augmentation(augment, ds.x_train.shape[1:], flip=augment_flip,
                                             seed=seed), seed=seed)
    logdir = os.path.join(workdir, "tensorboard")
    callbacks = [  # selection and StepTimer first: they add metrics the others record
        selection,
        tb_views.StepTimer(),
        callbacks_lib.NonFiniteGuard(steps_per_epoch),
        tb_views.MetaViews(logdir, streams.train_images, streams.train_labels,
                           streams.is_noisy, seed=seed, eval_batch_size=eval_batch_size),
        keras.callbacks.TensorBoard(logdir),
        run_state]
    for first, last, meta_active in _phases(model, warmup_epochs, epochs, start_epoch):
        model.set_meta_active(meta_active)
        extra = [streams.reselect] if meta_active and streams.reselect else []
        model.fit(streams.train(first, meta=meta_active), initial_epoch=first, epochs=last,
                  steps_per_epoch=steps_per_epoch, verbose=verbose,
                  shuffle=False,  # the stream shuffles itself, seeded per epoch
                  callbacks=[*extra, *callbacks])
    if export:
        export_lib.export_saved_model(
            model.backbone, os.path.join(workdir, "saved_model"),
            input_shape=ds.x_train.shape[1:],
            input_dtype="uint8" if ds.x_train.dtype == np.uint8 else "float32",
            overwrite=resume)  # a resumed run may have exported before it died
    return _results(setup, selection.summary(), run_state.history)


class _Streams:
    """Builds the (train, meta) stream of each fit phase; owns the sloss meta set."""

    def __init__(self, setup: Setup, *, method: str, batch_size: int, meta_batch_size: int,
                 steps_per_epoch: int, eval_batch_size: int, augment, seed: int):
        ds, idx = setup.dataset, setup.train_indices
        self.setup, self.augment, self.seed = setup, augment, seed
        self.train_images, self.train_labels = ds.x_train[idx], setup.noisy_labels[idx]
        self.batch_size, self.meta_batch_size = batch_size, meta_batch_size
        self.steps_per_epoch = steps_per_epoch
        clean = ds.y_train_clean
        self.is_noisy = None if clean is None else self.train_labels != clean[idx]
        self.meta_set = self.reselect = None
        if method in splits.SMALL_LOSS:  # the meta set changes every epoch
            size = len(setup.meta_indices)
            self.meta_set = sloss_lib.DynamicMetaSet(
                self.train_images, self.train_labels,
                np.searchsorted(idx, setup.meta_indices), size=size,
                num_classes=ds.num_classes)
            self.reselect = sloss_lib.SmallLossReselection(
                self.meta_set, self.train_images, self.train_labels, size=size,
                num_classes=ds.num_classes, seed=seed, batch_size=eval_batch_size,
                clean_labels=None if clean is None else clean[idx])

    def train(self, first_epoch: int, *, meta: bool):
        """Batches from `first_epoch` on; with meta batches only if `meta` (the warm-up
        never reads them). Every stream is seeded by epoch or step, so a phase sees the
        same batches wherever it starts."""
        setup = self.setup
        fixed_meta = meta and setup.meta_indices is not None and self.meta_set is None
        return data.train_stream(
            self.train_images, self.train_labels, batch_size=self.batch_size,
            seed=self.seed, steps_per_epoch=self.steps_per_epoch, first_epoch=first_epoch,
            is_noisy=self.is_noisy,
            meta_images=setup.dataset.x_train[setup.meta_indices] if fixed_meta else None,
            meta_labels=setup.meta_labels, meta_batch_size=self.meta_batch_size,
            augment=self.augment,
            meta_stream=self.meta_set.stream(
                self.meta_batch_size, self.seed + 1, augment=self.augment,
                first_step=first_epoch * self.steps_per_epoch)
            if meta and self.meta_set is not None else None)


def _results(setup: Setup, summary: dict, history: dict) -> dict:
    accuracy = summary["test_accuracy"]
    best_epoch = int(np.argmax(accuracy))
    return {
        "final_test_accuracy": accuracy[-1],
        "best_test_accuracy": accuracy[best_epoch],
        "best_epoch": best_epoch + 1,
        **{k: summary[k] for k in ("selected_epoch", "selected_accuracy",
                                   "ensemble3_accuracy", "ensemble5_accuracy")},
        **splits.noise_report(setup),
        "num_train": int(len(setup.train_indices)),
        "num_meta": 0 if setup.meta_indices is None else int(len(setup.meta_indices)),
        "num_test": int(len(setup.dataset.y_test)),
        "history": {k: v for k, v in history.items() if k != "step_time"},  # wall-clock
    }


def _augmentation(kind: str, input_shape, *, flip: bool, seed: int):
    if kind == "none":
        return None
    return augment_lib.build(kind, image_shape=input_shape, seed=seed, flip=flip)


def _phases(model: meta_model.MetaReweightModel, warmup_epochs: int, epochs: int,
            start: int = 0):
    """(first epoch, end epoch, meta updates on?) per fit call: warm-up with plain CE first,
    skipping what a resumed run (`start` epochs done) has already trained."""
    warmup = epochs if model.meta_net is None else min(warmup_epochs, epochs)
    phases = [(max(start, 0), warmup, False), (max(start, warmup), epochs, True)]
    return [p for p in phases if p[1] > p[0]]
