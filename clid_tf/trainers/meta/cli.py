"""The meta trainers' adapter (`--trainer=meta|vri_single`): their data, model, streams
and callbacks built from the flags as a Python user would build them
(`MetaReweightModel(...)`, `compile(...)`), handed to the runner as a `Plan`. The audit
trains its folds with the same plan on each fold's samples (`fold_of`); `--num_labels`
trains on the labeled part of a semi-supervised split alone (the supervised-only baseline
of the semi-supervised trainers).
"""

from __future__ import annotations

import numpy as np

from clid_tf import metanets
from clid_tf.data import meta_sets
from clid_tf.data import splits
from clid_tf.errors import RunError
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import parts
from clid_tf.trainers import runner


# ---------------------------------------------------------------- data (numpy only)
def prepare_setup(flags):
    """The run's data (`splits.Setup`, or with --num_labels the labeled part of
    `ssl_splits.SslSetup`); bad input raises RunError or DataError before TensorFlow
    starts."""
    if flags.num_labels:
        return parts.semi_supervised_setup(flags, unlabeled_batch_size=0)
    return parts.noisy_setup(flags)


def split_arrays(flags, setup) -> dict:
    """What split.npz holds (checked again on resume and by the audit)."""
    del flags
    arrays = run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                     setup.meta_indices, setup.val_indices)
    if hasattr(setup, "unlabeled_indices"):  # --num_labels
        arrays["unlabeled_indices"] = setup.unlabeled_indices
    return arrays


def steps_per_epoch(flags, setup) -> int:
    return flags.steps_per_epoch or len(setup.train_indices) // flags.batch_size


# ---------------------------------------------------------------- the model
def build_model(flags, setup, *, sync_batchnorm: bool):
    """The backbone and meta-net of the flags, wrapped in a MetaReweightModel."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.trainers.meta import model as meta_model  # pylint: disable=import-outside-toplevel
    net = parts.build_backbone(flags, setup, sync_batchnorm=sync_batchnorm, seed=flags.seed)
    if flags.method == "ce":
        return meta_model.MetaReweightModel(net, weight_decay=flags.weight_decay)
    meta_net = metanets.build(flags.meta_net, num_classes=setup.dataset.num_classes,
                              feature_dim=net.feature_dim, vri_kl=flags.vri_kl,
                              seed=flags.seed)
    try:  # e.g. --meta_scope=top:N on a backbone without N residual blocks
        return meta_model.MetaReweightModel(
            net, meta_net, meta_objective=flags.method, tau=flags.tau,
            meta_grad=flags.meta_grad, meta_scope=flags.meta_scope,
            virtual_step=flags.virtual_step, meta_every=flags.meta_every,
            weight_decay=flags.weight_decay, meta_weight_decay=flags.meta_weight_decay)
    except ValueError as error:
        raise RunError(str(error)) from error


def compiled_model(flags, setup, steps: int):
    """The flags' model under the flags' strategy, compiled with both optimizers."""
    strategy = parts.start_strategy(flags)
    with strategy.scope():
        model = build_model(flags, setup, sync_batchnorm=strategy.num_replicas_in_sync > 1)
        model.compile(parts.classifier_optimizer(flags, steps),
                      None if model.meta_net is None else parts.meta_optimizer(flags),
                      jit_compile=flags.jit_compile)
    return model


# ---------------------------------------------------------------- the plan
def build(flags, setup):
    """The runner's `Plan`: the compiled model, its stream (training batches through
    --augment, meta batches through --meta_augment, each set re-drawn every epoch where
    the setup says so) and its callbacks (the warm-up switch, the optimizer reset, the
    small-loss reselection)."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.runs import callbacks as run_callbacks
    from clid_tf.runs import tb_views
    steps = steps_per_epoch(flags, setup)
    model = compiled_model(flags, setup, steps)
    meta_set, reselect = small_loss_meta_set(flags, setup, model)
    views = tb_views.sample_indices(len(setup.train_indices), parts.VIEW_SAMPLES, flags.seed)
    return runner.Plan(
        model, lambda start: training_stream(flags, setup, model, steps, start, meta_set),
        steps_per_epoch=steps,
        callbacks=[run_callbacks.WarmUp(flags.warmup_epochs),
                   *([run_callbacks.ResetOptimizer()] if flags.reset_optimizer_each_epoch
                     else []), *reselect],
        views=setup.train_indices[views], results=lambda _: parts.meta_net_results(flags))


def small_loss_meta_set(flags, setup, model):
    """(the meta set chosen anew every epoch by small loss, [its reselection callback]) of
    the small-loss methods, else (None, [])."""
    if model.meta_net is None or flags.method not in splits.SMALL_LOSS:
        return None, []
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines
    from clid_tf.trainers.meta import small_loss
    ds = setup.dataset
    meta_set = small_loss.DynamicMetaSet(ds.train.inputs, setup.noisy_labels,
                                         setup.meta_indices, size=len(setup.meta_indices),
                                         num_classes=ds.num_classes)
    reselect = small_loss.SmallLossReselection(
        meta_set, pipelines.Part(ds.train.inputs, setup.train_indices,
                                 setup.noisy_labels[setup.train_indices]),
        size=len(setup.meta_indices), num_classes=ds.num_classes, seed=flags.seed,
        batch_size=flags.eval_batch_size, first_epoch=flags.warmup_epochs,
        clean_labels=(None if ds.train.clean_labels is None
                      else ds.train.clean_labels[setup.train_indices]))
    return meta_set, [reselect]


def training_stream(flags, setup, model, steps: int, start: int, meta_set=None):
    """The fit stream from epoch `start` on: the training batches and, with a meta-net,
    the meta batches (of `meta_set`, the small-loss one, when given)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import pipelines  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    train = parts.training_batches(flags, setup, steps, start)
    if model.meta_net is None:
        return pipelines.training_stream(train)
    meta_augment = parts.augmentation(flags, ds, flags.meta_augment)
    if meta_set is not None:  # the meta set changes every epoch
        meta = meta_set.stream(flags.meta_batch_size, flags.seed + 1, augment=meta_augment,
                               first_step=start * steps)
        return pipelines.training_stream(train, meta, live_meta=True)
    meta_fields = {}
    if setup.meta_labels is not None:  # labelled objectives only: clid meta batches carry none
        labels = np.full(len(ds.train.inputs), -1, np.int32)
        labels[setup.meta_indices] = setup.meta_labels
        meta_fields["label"] = labels
    meta = pipelines.epoch_batches(setup.meta_inputs(), setup.meta_indices,
                                   batch_size=flags.meta_batch_size, seed=flags.seed + 1,
                                   steps_per_epoch=steps, first_epoch=start,
                                   fields=meta_fields, augment=meta_augment,
                                   indices_of_epoch=setup.meta_of_epoch)
    return pipelines.training_stream(train, meta)


# ---------------------------------------------------------------- the label audit
def fold_of(flags, setup, train_indices: np.ndarray):
    """The run's setup restricted to one fold's training samples: a label-free or
    small-loss meta set is drawn anew from them; a labelled one (already outside
    training) or one of validation images is kept. A fold trains on its part of the run's
    training subset, not re-drawn per epoch."""
    setup = setup._replace(train_of_epoch=None)
    redraw = flags.method in (*splits.LABEL_FREE, *splits.SMALL_LOSS, "ce")
    if not redraw or setup.meta_split == "val":
        return setup._replace(train_indices=train_indices)
    size = min(len(setup.selection_indices), len(train_indices))
    if flags.method in splits.SMALL_LOSS:
        meta, _ = meta_sets.balanced_split(setup.noisy_labels[train_indices], size=size,
                                           num_classes=setup.dataset.num_classes,
                                           seed=flags.seed)
        meta = train_indices[meta]
        return setup._replace(train_indices=train_indices, meta_indices=meta,
                              meta_labels=setup.noisy_labels[meta], selection_indices=meta)
    meta = train_indices[meta_sets.random_subset(len(train_indices), size=size,
                                                 seed=flags.seed)]
    redrawn = (None if setup.meta_of_epoch is None  # from the fold's own samples
               else splits.redrawn_meta(train_indices, meta, flags.seed))
    return setup._replace(train_indices=train_indices, selection_indices=meta,
                          meta_indices=None if flags.method == "ce" else meta,
                          meta_of_epoch=redrawn)
