"""The parts of a training run, built from the flags: data, model, streams, callbacks.

They hand the library exactly what a Python user would: `MetaReweightModel(...)`,
`compile(...)`, `fit(...)`. `train` fits and exports one run; the audit trains its folds
with the same pieces. The cli package is the only reader of FLAGS.
"""

from __future__ import annotations

import os

from clid_tf.data import datasets
from clid_tf.data import sources as loaders
from clid_tf.runs import folder as run_folder
from clid_tf.errors import RunError
from clid_tf.cli import flagdefs
from clid_tf.cli.flagdefs import FLAGS, HUMAN_NOISE, training_flag_names

# keras.applications' ResNet-50 ImageNet weights (notop): the file Keras caches under
# $KERAS_HOME/models (default ~/.keras/models) and where it fetches it from.
RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                        f"resnet/{RESNET50_WEIGHTS}")


def meta_net_kind() -> str:
    """--meta_net, else the trainer's: vri for vri_single and dividemix (which rectify
    logits), wnet for meta and the semi-supervised loss-net."""
    return FLAGS.meta_net or ("vri" if FLAGS.trainer in ("vri_single", "dividemix")
                              else "wnet")


def virtual_step_kind() -> str:
    """--virtual_step, else the trainer's: plain SGD for meta (the paper's), a copy of the
    real optimizer's update for the others (the reference's `higher` step, A.2.4)."""
    return FLAGS.virtual_step or ("sgd" if FLAGS.trainer == "meta" else "optimizer")


def pretrained_weights() -> str | None:
    """The weights file (or Keras' 'imagenet', downloaded when online) of --pretrained, or
    None; RunError at once when it cannot be had (offline and not cached, a missing PATH)."""
    value = FLAGS.pretrained
    if value in ("none", ""):
        return None
    if value != "imagenet":
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.isfile(path):
            raise RunError(f"--pretrained={value}: no such weights file")
        return path
    keras_home = os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))
    cached = os.path.join(keras_home, "models", RESNET50_WEIGHTS)
    if os.path.isfile(cached):
        return cached
    from clid_tf.data.sources import cifar as tfds_cifar  # pylint: disable=import-outside-toplevel
    if not tfds_cifar.online():
        raise RunError(f"--pretrained=imagenet: the ResNet-50 ImageNet weights are not in "
                       f"{os.path.dirname(cached)} and there is no network to download "
                       f"them; fetch {RESNET50_WEIGHTS_URL} on a machine with internet and "
                       f"pass --pretrained=PATH_OF_THAT_FILE (or copy it to {cached})")
    return "imagenet"  # keras.applications downloads it into its cache


def default_noise(dataset: datasets.Dataset) -> str:
    """--noise as given, else none for a user's own labels (they are used as given) and the
    reference's sym for a benchmark with clean labels (digits, CIFAR)."""
    if FLAGS.noise is not None:
        return FLAGS.noise
    return "none" if dataset.labels_given else "sym"


def load_dataset() -> datasets.Dataset:
    noise = FLAGS.noise
    return loaders.load(FLAGS.dataset, human_label=noise if noise in HUMAN_NOISE else None,
                        data_dir=FLAGS.data_dir, data_root=FLAGS.data_root,
                        image_size=FLAGS.image_size, val_list=FLAGS.val_list,
                        test_list=FLAGS.test_list, class_names_file=FLAGS.class_names_file,
                        resize_shorter=FLAGS.resize_shorter)


def prepare_setup():
    """The run's data (`splits.Setup`) from the flags; bad input raises RunError/DataError."""
    from clid_tf.data import splits  # pylint: disable=import-outside-toplevel
    dataset = load_dataset()
    inputs = dataset.train.inputs.element_shape
    if len(inputs) == 1 and FLAGS.backbone != "mlp":
        raise RunError(f"--backbone={FLAGS.backbone} needs images, but {FLAGS.dataset} holds "
                       f"feature vectors [{inputs[0]}]; use --backbone=mlp")
    if FLAGS.meta_scope.startswith("top:") and FLAGS.backbone in NO_RESIDUAL_BLOCKS:
        raise RunError(f"--meta_scope={FLAGS.meta_scope} needs a backbone with residual "
                       f"blocks (resnet32, preact_resnet18, resnet34, wrn28_10, wrn28_2, "
                       f"resnet50); --backbone={FLAGS.backbone} has none")
    if FLAGS.meta_scope == "last_layer" and FLAGS.backbone == "vgg19_bn":
        raise RunError("--meta_scope=last_layer steps a Dense head on the features; "
                       "vgg19_bn's features feed an MLP (its CLID feature is the pooled conv "
                       "feature): use --meta_scope=full")
    for flag in ("augment", "meta_augment", "select_augment"):
        kind = FLAGS[flag].value
        if kind in (None, "none"):
            continue
        if len(inputs) != 3:
            raise RunError(f"--{flag}={kind} needs images; {FLAGS.dataset} holds feature "
                           "vectors")
        if kind != "flip" and min(inputs[:2]) <= CROP_PAD:
            raise RunError(f"--{flag}={kind} crops images padded by {CROP_PAD} pixels, so it "
                           f"needs images larger than that; these are "
                           f"{inputs[0]}x{inputs[1]}")
    if FLAGS.standardize == "imagenet" and inputs[-1:] != (3,):
        raise RunError(f"--standardize=imagenet holds RGB statistics; {FLAGS.dataset} has "
                       f"input shape {inputs}")
    pretrained_weights()  # fails at once when the weights cannot be had
    try:
        return splits.prepare(
            dataset, noise=default_noise(dataset), noise_rate=FLAGS.noise_rate,
            method=FLAGS.method,
            meta_size=FLAGS.meta_size, batch_size=FLAGS.batch_size,
            meta_batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed,
            val_split=FLAGS.val_split, imbalance_gamma=FLAGS.imbalance_gamma,
            meta_source=FLAGS.meta_source, redraw_meta=FLAGS.redraw_meta_each_epoch,
            train_subset=FLAGS.train_subset,
            resample_subset=FLAGS.resample_subset_each_epoch)
    except ValueError as error:
        raise RunError(str(error)) from error


def train(setup, folder: run_folder.RunFolder, *, resuming: bool) -> dict:
    """Builds the model, its callbacks and streams from FLAGS, fits, exports."""
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf.runs import callbacks as callbacks_lib
    from clid_tf.data import pipelines as data
    from clid_tf.evaluation import selection as selection_lib
    from clid_tf.runs import tb_views
    if not resuming:  # a resumed run's TensorBoard folder has them already
        tensorboard_header(folder)
    ds = setup.dataset
    steps = steps_per_epoch(setup)
    model = compiled_model(setup, steps)
    selection = selection_lib.ClidSelection(
        data.Part(setup.meta_inputs(), setup.selection_indices),
        test=None if ds.test is None else data.Part(ds.test.inputs, None, ds.test.labels),
        batch_size=min(FLAGS.meta_batch_size, len(setup.selection_indices)), tau=FLAGS.tau,
        keep=FLAGS.select_keep, seed=FLAGS.seed, eval_batch_size=FLAGS.eval_batch_size,
        augment=augmentation(ds, FLAGS.select_augment or "none"),
        directory=folder.selected_weights)
    run_state = callbacks_lib.RunState(folder.checkpoints, model, selection)
    start = run_state.restore() if resuming else 0
    if start:
        print(f"resuming after epoch {start} of {FLAGS.epochs}")
    views = tb_views.sample_indices(len(setup.train_indices), VIEW_SAMPLES, FLAGS.seed)
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
    exported = export(model, selection, ds, folder, overwrite=resuming)
    return results_of(setup, selection, run_state.history, exported)


# Training samples whose meta weights the TensorBoard views show each epoch: enough for
# smooth histograms, few enough that the views cost ~2% of a CIFAR epoch (bench_overhead).
VIEW_SAMPLES = 1000


# clid_tf.data.augment.CROP_PAD, written here so the check runs before TensorFlow is imported.
CROP_PAD = 4
# Backbones without residual blocks (no top:N meta scope).
NO_RESIDUAL_BLOCKS = ("small_cnn", "mlp", "vgg19_bn")


def tensorboard_header(folder: run_folder.RunFolder) -> None:
    """The run's hyper-parameters (HParams tab) and the custom-scalars layout."""
    from clid_tf.runs import tb_views  # pylint: disable=import-outside-toplevel
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


def start_strategy():
    """--deterministic and --seed applied, the --strategy started (RunError if it cannot)."""
    # pylint: disable=import-outside-toplevel
    import keras
    import tensorflow as tf
    from clid_tf.core import distribute
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        return distribute.make_strategy(FLAGS.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:  # no TPU, a bad TF_CONFIG
        raise RunError(f"--strategy={FLAGS.strategy} cannot start here: "
                       f"{str(error).splitlines()[0]}") from error


def compiled_model(setup, steps: int):
    """The flags' model under the flags' strategy, compiled with both optimizers."""
    strategy = start_strategy()
    with strategy.scope():
        model = build_model(setup, sync_batchnorm=strategy.num_replicas_in_sync > 1)
        model.compile(classifier_optimizer(steps), meta_optimizer(model),
                      jit_compile=FLAGS.jit_compile)
    return model


def fit(model, setup, steps: int, *, start: int = 0, callbacks=(), checkpoint=None,
        validation: bool = False) -> None:
    """Fits from epoch `start` to --epochs with the warm-up switch, the small-loss
    reselection where the method has one, the given callbacks, the NaN guard and last the
    `checkpoint` callback (the guard raises before a bad epoch is checkpointed)."""
    from clid_tf.runs import callbacks as callbacks_lib  # pylint: disable=import-outside-toplevel
    stream, reselect = training_stream(setup, model, steps, start)
    reset = [callbacks_lib.ResetOptimizer()] if FLAGS.reset_optimizer_each_epoch else []
    model.fit(stream, initial_epoch=start, epochs=FLAGS.epochs, steps_per_epoch=steps,
              verbose=FLAGS.verbose, shuffle=False,  # the stream shuffles, seeded by epoch
              callbacks=[callbacks_lib.WarmUp(FLAGS.warmup_epochs), *reset, *reselect,
                         *callbacks,
                         callbacks_lib.NonFiniteGuard(steps),
                         *([] if checkpoint is None else [checkpoint])],
              validation_data=validation_batches(setup) if validation else None)


def build_backbone(setup, *, sync_batchnorm: bool, seed: int):
    """The flags' backbone for the setup's data, initialised from `seed`."""
    from clid_tf.models import backbones  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    mean, std = ((backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
                 if FLAGS.standardize == "imagenet" else (ds.mean, ds.std))
    try:
        return backbones.build(FLAGS.backbone, num_classes=ds.num_classes,
                               input_shape=ds.train.inputs.element_shape, mean=mean,
                               std=std, seed=seed, sync_batchnorm=sync_batchnorm,
                               dtype_policy="float32" if FLAGS.mixed_precision == "none"
                               else FLAGS.mixed_precision, pretrained=pretrained_weights())
    except (ValueError, OSError) as error:  # also an unreadable or mismatched weights file
        raise RunError(f"--backbone={FLAGS.backbone}: {str(error).splitlines()[0]}") from error


def build_model(setup, *, sync_batchnorm: bool):
    """The backbone and meta-net of the flags, wrapped in a MetaReweightModel."""
    # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.meta import model as meta_model
    from clid_tf.metanets import wnet as meta_nets
    ds = setup.dataset
    net = build_backbone(setup, sync_batchnorm=sync_batchnorm, seed=FLAGS.seed)
    if FLAGS.method == "ce":
        return meta_model.MetaReweightModel(net, weight_decay=FLAGS.weight_decay)
    meta_net = meta_nets.build(meta_net_kind(), num_classes=ds.num_classes,
                               feature_dim=net.feature_dim, vri_kl=FLAGS.vri_kl,
                               seed=FLAGS.seed)
    try:  # e.g. --meta_scope=top:N on a backbone without N residual blocks
        return meta_model.MetaReweightModel(
            net, meta_net, meta_objective=FLAGS.method, tau=FLAGS.tau,
            meta_grad=FLAGS.meta_grad, meta_scope=FLAGS.meta_scope,
            virtual_step=virtual_step_kind(), meta_every=FLAGS.meta_every,
            weight_decay=FLAGS.weight_decay, meta_weight_decay=FLAGS.meta_weight_decay)
    except ValueError as error:
        raise RunError(str(error)) from error


def lr_schedule(steps_per_epoch: int):
    """The flags' per-epoch learning-rate schedule of the classifier (step -> lr)."""
    from clid_tf.core import schedules  # pylint: disable=import-outside-toplevel
    return schedules.build(FLAGS.lr_schedule, FLAGS.lr, steps_per_epoch=steps_per_epoch,
                           epochs=FLAGS.epochs, t_max=FLAGS.lr_tmax, eta_min=FLAGS.lr_eta_min,
                           milestones=[int(m) for m in FLAGS.lr_milestones],
                           gamma=FLAGS.lr_gamma, start_epoch=FLAGS.lr_schedule_start)


def classifier_optimizer(steps_per_epoch: int, *, nesterov: bool = False):
    """--optimizer (SGD with --momentum, heavy ball or `nesterov`, or Adam as PyTorch's:
    beta 0.9/0.999, epsilon 1e-8) on the flags' per-epoch schedule."""
    import keras  # pylint: disable=import-outside-toplevel
    if FLAGS.optimizer == "adam":
        return keras.optimizers.Adam(lr_schedule(steps_per_epoch), beta_1=0.9, beta_2=0.999,
                                     epsilon=1e-8)
    return keras.optimizers.SGD(lr_schedule(steps_per_epoch), momentum=FLAGS.momentum,
                                nesterov=nesterov)


def meta_optimizer(model=None):
    """The meta-net's optimizer (None for a model without a meta-net)."""
    import keras  # pylint: disable=import-outside-toplevel
    if model is not None and model.meta_net is None:
        return None
    kind = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[FLAGS.meta_optimizer]
    return kind(FLAGS.meta_lr)


def augmentation(ds, kind: str | None = None):
    """A batch augmentation of images (`kind`, default --augment), or None for none;
    'flip' is the weak augmentation without its crop."""
    kind = FLAGS.augment if kind is None else kind
    if kind == "none":
        return None
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    pad = {"flip": 0}.get(kind, augment.CROP_PAD)
    return augment.build("weak" if kind == "flip" else kind,
                         image_shape=ds.train.inputs.element_shape, seed=FLAGS.seed,
                         flip=FLAGS.augment_flip, pad=pad)


def noise_flags(setup):
    """bool [N] whether each training label was flipped (ground truth, monitoring), or None."""
    clean = setup.dataset.train.clean_labels
    return None if clean is None else setup.noisy_labels != clean


def training_stream(setup, model, steps: int, start: int):
    """(the fit stream from epoch `start` on, [the small-loss reselection callback]):
    training batches through --augment, meta batches through --meta_augment (default the
    same), each set re-drawn every epoch where the setup says so."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.meta import small_loss as sloss
    from clid_tf.data import splits
    ds = setup.dataset
    augment = augmentation(ds)
    meta_augment = augment if FLAGS.meta_augment is None else augmentation(ds,
                                                                            FLAGS.meta_augment)
    fields = {"label": setup.noisy_labels.astype(np.int32)}
    is_noisy = noise_flags(setup)
    if is_noisy is not None:
        fields["is_noisy"] = is_noisy
    train = data.epoch_batches(ds.train.inputs, setup.train_indices,
                               batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                               steps_per_epoch=steps, first_epoch=start, fields=fields,
                               augment=augment, indices_of_epoch=setup.train_of_epoch)
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
        meta = meta_set.stream(FLAGS.meta_batch_size, FLAGS.seed + 1, augment=meta_augment,
                               first_step=start * steps)
        return data.training_stream(train, meta, live_meta=True), [reselect]
    meta_fields = {}
    if setup.meta_labels is not None:  # labelled objectives only: clid meta batches carry none
        labels = np.full(len(ds.train.inputs), -1, np.int32)
        labels[setup.meta_indices] = setup.meta_labels
        meta_fields["label"] = labels
    meta = data.epoch_batches(setup.meta_inputs(), setup.meta_indices,
                              batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed + 1,
                              steps_per_epoch=steps, first_epoch=start, fields=meta_fields,
                              augment=meta_augment, indices_of_epoch=setup.meta_of_epoch)
    return data.training_stream(train, meta), []


def validation_batches(setup):
    """(inputs, labels) batches of the held-out part or of the val split, for fit's
    validation_data (Keras logs val_accuracy and val_loss); None without either."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
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
           last=None) -> list:
    """The SavedModel of --export: the selected epoch, the top-k ensemble, or the last
    (`last`, default the model's backbone). Returns the exported epochs (1-based; empty
    for none)."""
    if FLAGS.export == "none":
        return []
    from clid_tf.runs import export as export_lib  # pylint: disable=import-outside-toplevel
    if FLAGS.export == "last":
        networks, epochs = [model.backbone if last is None else last], [FLAGS.epochs]
    else:
        k = 1 if FLAGS.export == "selected" else min(FLAGS.select_keep, len(selection.store))
        networks, epochs = selection.members(k), selection.store.best_epochs(k)
    export_lib.export_saved_model(
        networks, folder.saved_model, input_shape=ds.train.inputs.element_shape,
        input_dtype=ds.train.inputs.dtype, class_names=ds.class_names,
        decode=getattr(ds.train.inputs, "decode", None),  # file data: decode as trained
        overwrite=overwrite)  # a resumed run may have exported before it died
    return epochs


def results_of(setup, selection, history: dict, exported: list) -> dict:
    """results.json: accuracies (test ones when a test split exists; val ones against the
    val split's labels: the noisy labels of a --val_split part, a user's own for a val/
    folder or x_val), selection, the export, noise, history."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from clid_tf.data import splits  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    summary = selection.summary()
    results = {"selected_epoch": summary["selected_epoch"], "kept": summary["kept"],
               "class_names": list(ds.class_names), "export": FLAGS.export,
               "exported_epochs": exported}
    if FLAGS.method != "ce":  # the trainer's defaults where the flags left them open
        results.update(meta_net=meta_net_kind(), virtual_step=virtual_step_kind())
    accuracy = summary.get("test_accuracy")
    if accuracy:
        best = int(np.argmax(accuracy))
        results.update(final_test_accuracy=accuracy[-1], best_test_accuracy=accuracy[best],
                       best_epoch=best + 1,
                       **{k: summary[k] for k in ("selected_accuracy", "ensemble3_accuracy",
                                                  "ensemble5_accuracy")})
        if FLAGS.export == "last":
            results["exported_test_accuracy"] = accuracy[-1]
        elif exported:  # the argmax of the exported epochs' summed test logits
            results["exported_test_accuracy"] = selection.store.ensemble_accuracy(
                ds.test.labels, len(exported))
    val = history.get("val_accuracy")
    if val:
        results.update(final_val_accuracy=val[-1], best_val_accuracy=max(val),
                       selected_val_accuracy=val[summary["selected_epoch"] - 1])
    results.update(
        **splits.noise_report(setup),
        num_train=int(len(setup.train_indices)),
        num_meta=0 if setup.meta_indices is None else int(len(setup.meta_indices)),
        meta_split=setup.meta_split,
        num_val=(int(len(setup.val_indices)) if setup.val_indices is not None
                 else 0 if ds.val is None else int(len(ds.val.labels))),
        num_test=0 if ds.test is None else int(len(ds.test.labels)),
        history={k: v for k, v in history.items() if k != "step_time"})  # wall-clock
    return results


def _read(source, indices):
    from clid_tf.data import inputs as sources  # pylint: disable=import-outside-toplevel
    return sources.read_numpy(source, indices)


