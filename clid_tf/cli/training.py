"""The parts of a training run, built from the flags: data, model, streams, callbacks.

They hand the library exactly what a Python user would: `MetaReweightModel(...)`,
`compile(...)`, `fit(...)`. `train` fits and exports one run; the audit trains its folds
with the same pieces. The cli package is the only reader of FLAGS.
"""

from __future__ import annotations

from clid_tf import datasets
from clid_tf import loaders
from clid_tf import run_folder
from clid_tf.errors import RunError
from clid_tf.cli.flagdefs import FLAGS, HUMAN_NOISE, training_flag_names

def default_noise() -> str:
    """--noise as given, else sym for the clean benchmarks and none for a user's labels."""
    if FLAGS.noise is not None:
        return FLAGS.noise
    return "sym" if FLAGS.dataset in ("digits", "cifar10", "cifar100") else "none"


def load_dataset() -> datasets.Dataset:
    noise = default_noise()
    return loaders.load(FLAGS.dataset, human_label=noise if noise in HUMAN_NOISE else None,
                        data_dir=FLAGS.data_dir, data_root=FLAGS.data_root,
                        image_size=FLAGS.image_size, val_list=FLAGS.val_list,
                        test_list=FLAGS.test_list, class_names_file=FLAGS.class_names_file)


def prepare_setup():
    """The run's data (`splits.Setup`) from the flags; bad input raises RunError/DataError."""
    from clid_tf import splits  # pylint: disable=import-outside-toplevel
    dataset = load_dataset()
    inputs = dataset.train.inputs.element_shape
    if len(inputs) == 1 and FLAGS.backbone != "mlp":
        raise RunError(f"--backbone={FLAGS.backbone} needs images, but {FLAGS.dataset} holds "
                       f"feature vectors [{inputs[0]}]; use --backbone=mlp")
    if FLAGS.augment != "none" and len(inputs) != 3:
        raise RunError(f"--augment={FLAGS.augment} needs images; {FLAGS.dataset} holds "
                       "feature vectors")
    try:
        return splits.prepare(
            dataset, noise=default_noise(), noise_rate=FLAGS.noise_rate, method=FLAGS.method,
            meta_size=FLAGS.meta_size, batch_size=FLAGS.batch_size,
            meta_batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed,
            val_split=FLAGS.val_split, imbalance_gamma=FLAGS.imbalance_gamma)
    except ValueError as error:
        raise RunError(str(error)) from error


def train(setup, folder: run_folder.RunFolder, *, resuming: bool) -> dict:
    """Builds the model, its callbacks and streams from FLAGS, fits, exports."""
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf import callbacks as callbacks_lib
    from clid_tf import data, selection as selection_lib, tb_views
    if not resuming:  # a resumed run's TensorBoard folder has them already
        tensorboard_header(folder)
    ds = setup.dataset
    steps = steps_per_epoch(setup)
    model = compiled_model(setup, steps)
    selection = selection_lib.ClidSelection(
        data.Part(ds.train.inputs, setup.selection_indices),
        test=None if ds.test is None else data.Part(ds.test.inputs, None, ds.test.labels),
        batch_size=min(FLAGS.meta_batch_size, len(setup.selection_indices)), tau=FLAGS.tau,
        keep=FLAGS.select_keep, seed=FLAGS.seed, eval_batch_size=FLAGS.eval_batch_size,
        augment=augmentation(ds, FLAGS.select_augment or "none"),
        directory=folder.selected_weights)
    run_state = callbacks_lib.RunState(folder.checkpoints, model, selection)
    start = run_state.restore() if resuming else 0
    if start:
        print(f"resuming after epoch {start} of {FLAGS.epochs}")
    views = tb_views.sample_indices(len(setup.train_indices), 2000, FLAGS.seed)
    views = setup.train_indices[views]
    is_noisy = noise_flags(setup)
    fit(model, setup, steps, start=start, validation=True, callbacks=[
        selection,  # adds logs: before the callbacks that record them
        tb_views.StepTimer(),
        tb_views.MetaViews(
            folder.tensorboard, _read(ds.train.inputs, views), setup.noisy_labels[views],
            None if is_noisy is None else is_noisy[views], sample_size=len(views),
            seed=FLAGS.seed, eval_batch_size=FLAGS.eval_batch_size),
        keras.callbacks.TensorBoard(folder.tensorboard)], checkpoint=run_state)
    export(model, selection, ds, folder, overwrite=resuming)
    return results_of(setup, selection.summary(), run_state.history)


def tensorboard_header(folder: run_folder.RunFolder) -> None:
    """The run's hyper-parameters (HParams tab) and the custom-scalars layout."""
    from clid_tf import tb_views  # pylint: disable=import-outside-toplevel
    tb_views.write_hparams(folder.tensorboard, {
        name: FLAGS[name].value for name in sorted(training_flag_names())
        if name not in ("workdir", "resume", "verbose")})
    tb_views.write_layout(folder.tensorboard)


def split_arrays(setup) -> dict:
    """What split.npz holds for this trainer (checked again on resume and by the audit)."""
    return run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                   setup.meta_indices, setup.val_indices)


def steps_per_epoch(setup) -> int:
    return FLAGS.steps_per_epoch or len(setup.train_indices) // FLAGS.batch_size


def compiled_model(setup, steps: int):
    """The flags' model under the flags' strategy, compiled with both optimizers."""
    strategy = start_strategy()
    with strategy.scope():
        model = build_model(setup, sync_batchnorm=strategy.num_replicas_in_sync > 1)
        model.compile(classifier_optimizer(steps), meta_optimizer(model),
                      jit_compile=FLAGS.jit_compile)
    return model


def start_strategy():
    """The flags' tf.distribute strategy, after op determinism and the seed are set."""
    # pylint: disable=import-outside-toplevel
    import keras
    import tensorflow as tf
    from clid_tf import distribute
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        return distribute.make_strategy(FLAGS.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:  # no TPU, a bad TF_CONFIG
        raise RunError(f"--strategy={FLAGS.strategy} cannot start here: "
                       f"{str(error).splitlines()[0]}") from error


def fit(model, setup, steps: int, *, start: int = 0, callbacks=(), checkpoint=None,
        validation: bool = False) -> None:
    """Fits from epoch `start` to --epochs with the warm-up switch, the small-loss
    reselection where the method has one, the given callbacks, the NaN guard and last the
    `checkpoint` callback (the guard raises before a bad epoch is checkpointed)."""
    from clid_tf import callbacks as callbacks_lib  # pylint: disable=import-outside-toplevel
    stream, reselect = training_stream(setup, model, augmentation(setup.dataset), steps,
                                       start)
    model.fit(stream, initial_epoch=start, epochs=FLAGS.epochs, steps_per_epoch=steps,
              verbose=FLAGS.verbose, shuffle=False,  # the stream shuffles, seeded by epoch
              callbacks=[callbacks_lib.WarmUp(FLAGS.warmup_epochs), *reselect, *callbacks,
                         callbacks_lib.NonFiniteGuard(steps),
                         *([] if checkpoint is None else [checkpoint])],
              validation_data=validation_batches(setup) if validation else None)


def build_model(setup, *, sync_batchnorm: bool):
    """The backbone and meta-net of the flags, wrapped in a MetaReweightModel."""
    from clid_tf import meta_model, meta_nets  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    net = build_backbone(ds, sync_batchnorm=sync_batchnorm)
    if FLAGS.method == "ce":
        return meta_model.MetaReweightModel(net, weight_decay=FLAGS.weight_decay)
    meta_net = meta_nets.build(FLAGS.meta_net, num_classes=ds.num_classes,
                               feature_dim=net.feature_dim, vri_kl=FLAGS.vri_kl,
                               seed=FLAGS.seed)
    return meta_model.MetaReweightModel(
        net, meta_net, meta_objective=FLAGS.method, tau=FLAGS.tau, meta_grad=FLAGS.meta_grad,
        meta_scope=FLAGS.meta_scope, virtual_step=FLAGS.virtual_step or "sgd",
        meta_every=FLAGS.meta_every, weight_decay=FLAGS.weight_decay,
        meta_weight_decay=FLAGS.meta_weight_decay)


def build_backbone(ds, *, sync_batchnorm: bool):
    """The flags' backbone for dataset `ds`."""
    from clid_tf import backbones  # pylint: disable=import-outside-toplevel
    try:
        return backbones.build(FLAGS.backbone, num_classes=ds.num_classes,
                               input_shape=ds.train.inputs.element_shape, mean=ds.mean,
                               std=ds.std, seed=FLAGS.seed, sync_batchnorm=sync_batchnorm,
                               dtype_policy="float32" if FLAGS.mixed_precision == "none"
                               else FLAGS.mixed_precision)
    except ValueError as error:
        raise RunError(f"--backbone={FLAGS.backbone}: {error}") from error


def classifier_optimizer(steps_per_epoch: int, *, nesterov: bool = False):
    """SGD with momentum (`nesterov` or heavy ball) on the flags' per-epoch schedule."""
    import keras  # pylint: disable=import-outside-toplevel
    from clid_tf import schedules  # pylint: disable=import-outside-toplevel
    schedule = schedules.build(FLAGS.lr_schedule, FLAGS.lr, steps_per_epoch=steps_per_epoch,
                               epochs=FLAGS.epochs, t_max=FLAGS.lr_tmax,
                               eta_min=FLAGS.lr_eta_min,
                               milestones=[int(m) for m in FLAGS.lr_milestones],
                               gamma=FLAGS.lr_gamma)
    return keras.optimizers.SGD(schedule, momentum=FLAGS.momentum, nesterov=nesterov)


def meta_optimizer(model):
    """The meta-net's optimizer (None without a meta-net)."""
    import keras  # pylint: disable=import-outside-toplevel
    if model.meta_net is None:
        return None
    kind = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[FLAGS.meta_optimizer]
    return kind(FLAGS.meta_lr)


def augmentation(ds, kind: str | None = None):
    """A batch augmentation of images (`kind`, default --augment), or None for none."""
    kind = FLAGS.augment if kind is None else kind
    if kind == "none":
        return None
    from clid_tf import augment  # pylint: disable=import-outside-toplevel
    return augment.build(kind, image_shape=ds.train.inputs.element_shape, seed=FLAGS.seed,
                         flip=FLAGS.augment_flip)


def noise_flags(setup):
    """bool [N] whether each training label was flipped (ground truth, monitoring), or None."""
    clean = setup.dataset.train.clean_labels
    return None if clean is None else setup.noisy_labels != clean


def training_stream(setup, model, augment, steps: int, start: int):
    """(the fit stream from epoch `start` on, [the small-loss reselection callback])."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from clid_tf import data, sloss, splits  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    fields = {"label": setup.noisy_labels.astype(np.int32)}
    is_noisy = noise_flags(setup)
    if is_noisy is not None:
        fields["is_noisy"] = is_noisy
    train = data.epoch_batches(ds.train.inputs, setup.train_indices,
                               batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                               steps_per_epoch=steps, first_epoch=start, fields=fields,
                               augment=augment)
    if model.meta_net is None:
        return data.training_stream(train), []
    if FLAGS.method in splits.SMALL_LOSS:  # the meta set changes every epoch
        meta_set = sloss.DynamicMetaSet(ds.train.inputs, setup.noisy_labels,
                                        setup.meta_indices, size=len(setup.meta_indices),
                                        num_classes=ds.num_classes)
        reselect = sloss.SmallLossReselection(
            meta_set, data.Part(ds.train.inputs, setup.train_indices,
                                setup.noisy_labels[setup.train_indices]),
            size=len(setup.meta_indices), num_classes=ds.num_classes, seed=FLAGS.seed,
            batch_size=FLAGS.eval_batch_size, first_epoch=FLAGS.warmup_epochs,
            clean_labels=(None if ds.train.clean_labels is None
                          else ds.train.clean_labels[setup.train_indices]))
        meta = meta_set.stream(FLAGS.meta_batch_size, FLAGS.seed + 1, augment=augment,
                               first_step=start * steps)
        return data.training_stream(train, meta), [reselect]
    meta_fields = {}
    if setup.meta_labels is not None:  # labelled objectives only: clid meta batches carry none
        labels = np.full(len(ds.train.inputs), -1, np.int32)
        labels[setup.meta_indices] = setup.meta_labels
        meta_fields["label"] = labels
    meta = data.epoch_batches(ds.train.inputs, setup.meta_indices,
                              batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed + 1,
                              steps_per_epoch=steps, first_epoch=start, fields=meta_fields,
                              augment=augment)
    return data.training_stream(train, meta), []


def validation_batches(setup):
    """(inputs, labels) batches of the held-out part or of the val split, for fit's
    validation_data (Keras logs val_accuracy and val_loss); None without either."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf import data  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    if setup.val_indices is not None:  # scored against their noisy labels
        source, indices, labels = ds.train.inputs, setup.val_indices, setup.noisy_labels
    elif ds.val is not None:
        source, indices, labels = ds.val.inputs, None, ds.val.labels
    else:
        return None
    table = tf.constant(labels.astype("int32"))  # by source index
    return data.ordered_batches(source, indices, batch_size=FLAGS.eval_batch_size).map(
        lambda ids, x: (x, tf.gather(table, ids)))


def export(model, selection, ds, folder: run_folder.RunFolder, *, overwrite: bool,
           last=None) -> None:
    """The SavedModel of --export: the selected epoch, the top-k ensemble, or the last
    (`last`, default the model's backbone)."""
    if FLAGS.export == "none":
        return
    from clid_tf import export as export_lib  # pylint: disable=import-outside-toplevel
    if FLAGS.export == "last":
        networks = [model.backbone if last is None else last]
    else:
        k = 1 if FLAGS.export == "selected" else min(FLAGS.select_keep, len(selection.store))
        networks = selection.members(k)
    export_lib.export_saved_model(
        networks, folder.saved_model, input_shape=ds.train.inputs.element_shape,
        input_dtype=ds.train.inputs.dtype, class_names=ds.class_names,
        overwrite=overwrite)  # a resumed run may have exported before it died


def results_of(setup, summary: dict, history: dict) -> dict:
    """results.json: accuracies (test ones when a test split exists; val ones against the
    held-out part's labels, noisy, when there is one), selection, noise, history."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from clid_tf import splits  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    results = {"selected_epoch": summary["selected_epoch"], "kept": summary["kept"],
               "class_names": list(ds.class_names), "export": FLAGS.export}
    accuracy = summary.get("test_accuracy")
    if accuracy:
        best = int(np.argmax(accuracy))
        results.update(final_test_accuracy=accuracy[-1], best_test_accuracy=accuracy[best],
                       best_epoch=best + 1,
                       **{k: summary[k] for k in ("selected_accuracy", "ensemble3_accuracy",
                                                  "ensemble5_accuracy")})
    val = history.get("val_accuracy")
    if val:
        results.update(final_val_accuracy=val[-1], best_val_accuracy=max(val),
                       selected_val_accuracy=val[summary["selected_epoch"] - 1])
    results.update(
        **splits.noise_report(setup),
        num_train=int(len(setup.train_indices)),
        num_meta=0 if setup.meta_indices is None else int(len(setup.meta_indices)),
        num_val=(int(len(setup.val_indices)) if setup.val_indices is not None
                 else 0 if ds.val is None else int(len(ds.val.labels))),
        num_test=0 if ds.test is None else int(len(ds.test.labels)),
        history={k: v for k, v in history.items() if k != "step_time"})  # wall-clock
    return results


def _read(source, indices):
    from clid_tf import sources  # pylint: disable=import-outside-toplevel
    return sources.read_numpy(source, indices)


