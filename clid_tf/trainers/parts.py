"""The parts every trainer's adapter builds from the flags: data, backbone, optimizers,
augmentations, the strategy, training and validation batches, the export (the runner,
`trainers/runner.py`, uses them around the fit).

Each function takes the parsed flags (`flags`, with the trainer's defaults filled in by
`clid_tf.cli.checks.TrainerFlags`) and hands the library what a Python user would: a
backbone from `models.backbones.build`, Keras optimizers, `data.augment.build`. Only the
numpy parts are imported at module level, so the command line checks data and flags
before TensorFlow starts.
"""

from __future__ import annotations

import os

import numpy as np

from clid_tf import names
from clid_tf.data import datasets
from clid_tf.data import sources
from clid_tf.data import splits
from clid_tf.data import ssl_splits
from clid_tf.data.sources import cifar
from clid_tf.errors import RunError

# keras.applications' ResNet-50 ImageNet weights (notop): the file Keras caches under
# $KERAS_HOME/models (default ~/.keras/models) and where it fetches it from.
RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                        f"resnet/{RESNET50_WEIGHTS}")
# PyTorch's Adam epsilon (Keras' default is 1e-7), for every Adam the command line builds.
ADAM_EPSILON = 1e-8
# Training samples whose meta weights the TensorBoard views show each epoch: enough for
# smooth histograms, few enough that the views cost ~2% of a CIFAR epoch (bench_overhead).
VIEW_SAMPLES = 1000


# ---------------------------------------------------------------- data (numpy only)
def default_noise(flags, dataset: datasets.Dataset) -> str:
    """--noise as given, else none for a user's own labels (they are used as given) and the
    authors' sym (`unif`: ruofanhu/CLID-MU@5cd0608, dataloader.py: uniform_mix_C()) for a benchmark
    with clean labels (digits, CIFAR)."""
    if flags.noise is not None:
        return flags.noise
    return "none" if dataset.labels_given else "sym"


def load_dataset(flags) -> datasets.Dataset:
    """The --dataset with the loader options the flags give."""
    noise = flags.noise
    return sources.load(flags.dataset,
                        human_label=noise if sources.is_human_label(noise) else None,
                        data_dir=flags.data_dir, data_root=flags.data_root,
                        image_size=flags.image_size, val_list=flags.val_list,
                        test_list=flags.test_list, class_names_file=flags.class_names_file,
                        resize_shorter=flags.resize_shorter)


def check_data(flags, dataset: datasets.Dataset) -> None:
    """RunError for flags the loaded data cannot have: an image backbone on feature
    vectors, augmentations of vectors or of images too small to crop, ImageNet statistics
    on non-RGB inputs, pretrained weights that cannot be had."""
    inputs = dataset.train.inputs.element_shape
    if len(inputs) == 1 and flags.backbone != "mlp":
        raise RunError(f"--backbone={flags.backbone} needs images, but {flags.dataset} holds "
                       f"feature vectors [{inputs[0]}]; use --backbone=mlp")
    for flag in ("augment", "meta_augment", "select_augment"):
        kind = getattr(flags, flag)
        if kind in (None, "none") or (flag == "select_augment" and not flags.given(flag)):
            continue  # a trainer's default selection augmentation follows the data
        if len(inputs) != 3:
            raise RunError(f"--{flag}={kind} needs images; {flags.dataset} holds feature "
                           "vectors")
        if kind != "flip" and min(inputs[:2]) <= names.CROP_PAD:
            raise RunError(f"--{flag}={kind} crops images padded by {names.CROP_PAD} pixels, "
                           f"so it needs images larger than that; these are "
                           f"{inputs[0]}x{inputs[1]}")
    if flags.standardize == "imagenet" and inputs[-1:] != (3,):
        raise RunError(f"--standardize=imagenet holds RGB statistics; {flags.dataset} has "
                       f"input shape {inputs}")
    pretrained_weights(flags)  # fails at once when the weights cannot be had


def noisy_setup(flags):
    """The run's data as `splits.Setup`: loaded, checked, noise injected, the held-out
    part, the meta set and the training subset split off; RunError (one line) for bad
    input."""
    dataset = load_dataset(flags)
    check_data(flags, dataset)
    try:
        return splits.prepare(
            dataset, noise=default_noise(flags, dataset), noise_rate=flags.noise_rate,
            method=flags.method, meta_size=flags.meta_size, batch_size=flags.batch_size,
            meta_batch_size=flags.meta_batch_size, seed=flags.seed,
            val_split=flags.val_split, imbalance_gamma=flags.imbalance_gamma,
            meta_source=flags.meta_source, redraw_meta=flags.redraw_meta_each_epoch,
            train_subset=flags.train_subset,
            resample_subset=flags.resample_subset_each_epoch)
    except ValueError as error:  # DataError included
        raise RunError(str(error)) from error


def semi_supervised_setup(flags, *, unlabeled_batch_size: int):
    """The run's data as `ssl_splits.SslSetup`: --num_labels class-balanced labeled
    samples with --noise injected into them only, the rest unlabeled, the meta set;
    RunError (one line) for bad input."""
    dataset = load_dataset(flags)
    check_data(flags, dataset)
    if len(dataset.train.inputs.element_shape) != 3:
        raise RunError(f"--num_labels needs images (weak and strong views); {flags.dataset} "
                       "holds feature vectors")
    try:
        return ssl_splits.prepare(
            dataset, num_labels=flags.num_labels, noise=default_noise(flags, dataset),
            noise_rate=flags.noise_rate, seed=flags.seed, meta_source=flags.ssl_meta_source,
            meta_size=flags.meta_size, include_labeled_in_unlabeled=flags.include_lb_to_ulb,
            val_split=flags.val_split, batch_size=flags.batch_size,
            unlabeled_batch_size=unlabeled_batch_size, meta_batch_size=flags.meta_batch_size)
    except ValueError as error:  # DataError included
        raise RunError(str(error)) from error


def pretrained_weights(flags) -> str | None:
    """The weights file (or Keras' 'imagenet', downloaded when online) of --pretrained, or
    None; RunError at once when it cannot be had (offline and not cached, a missing PATH)."""
    value = flags.pretrained
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
    if not cifar.online():
        raise RunError(f"--pretrained=imagenet: the ResNet-50 ImageNet weights are not in "
                       f"{os.path.dirname(cached)} and there is no network to download "
                       f"them; fetch {RESNET50_WEIGHTS_URL} on a machine with internet and "
                       f"pass --pretrained=PATH_OF_THAT_FILE (or copy it to {cached})")
    return "imagenet"  # keras.applications downloads it into its cache


def noise_flags(setup):
    """bool [N] whether each training label was flipped (ground truth, monitoring), or None."""
    clean = setup.dataset.train.clean_labels
    return None if clean is None else setup.noisy_labels != clean


# ---------------------------------------------------------------- models and optimizers
def start_strategy(flags):
    """--deterministic and --seed applied, the --strategy started (RunError if it cannot)."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    import keras
    import tensorflow as tf
    from clid_tf.core import distribute
    if flags.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(flags.seed)
    try:
        return distribute.make_strategy(flags.strategy)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:  # no TPU, a bad TF_CONFIG
        raise RunError(f"--strategy={flags.strategy} cannot start here: "
                       f"{str(error).splitlines()[0]}") from error


def build_backbone(flags, setup, *, sync_batchnorm: bool, seed: int):
    """The flags' backbone for the setup's data, initialised from `seed`."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.models import backbones  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    mean, std = ((backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
                 if flags.standardize == "imagenet" else (ds.mean, ds.std))
    try:
        return backbones.build(flags.backbone, num_classes=ds.num_classes,
                               input_shape=ds.train.inputs.element_shape, mean=mean,
                               std=std, seed=seed, sync_batchnorm=sync_batchnorm,
                               dtype_policy="float32" if flags.mixed_precision == "none"
                               else flags.mixed_precision,
                               pretrained=pretrained_weights(flags))
    except (ValueError, OSError) as error:  # also an unreadable or mismatched weights file
        raise RunError(f"--backbone={flags.backbone}: {str(error).splitlines()[0]}") from error


def lr_schedule(flags, steps_per_epoch: int):
    """The flags' per-epoch learning-rate schedule of the classifier (step -> lr)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.core import schedules  # pylint: disable=import-outside-toplevel
    return schedules.build(flags.lr_schedule, flags.lr, steps_per_epoch=steps_per_epoch,
                           epochs=flags.epochs, t_max=flags.lr_tmax, eta_min=flags.lr_eta_min,
                           milestones=[int(m) for m in flags.lr_milestones],
                           gamma=flags.lr_gamma, start_epoch=flags.lr_schedule_start)


def classifier_optimizer(flags, steps_per_epoch: int, *, nesterov: bool = False):
    """--optimizer (SGD with --momentum, heavy ball or `nesterov`, or Adam as PyTorch's:
    beta 0.9/0.999, epsilon 1e-8) on the flags' per-epoch schedule."""
    # deferred: keeps TensorFlow out of the command line's checks
    import keras  # pylint: disable=import-outside-toplevel
    if flags.optimizer == "adam":
        return keras.optimizers.Adam(lr_schedule(flags, steps_per_epoch), beta_1=0.9,
                                     beta_2=0.999, epsilon=ADAM_EPSILON)
    return keras.optimizers.SGD(lr_schedule(flags, steps_per_epoch), momentum=flags.momentum,
                                nesterov=nesterov)


def meta_optimizer(flags, *, nesterov: bool = False):
    """The meta-net's optimizer: --meta_optimizer at --meta_lr (Adam with PyTorch's epsilon
    1e-8, the authors' meta optimizers': ruofanhu/CLID-MU@5cd0608, main_vri.py: build_training();
    SGD with Nesterov momentum 0.9 when `nesterov`, the authors' semi-supervised one:
    semi/semilearn/core/algorithmbase.py:98; plain otherwise)."""
    # deferred: keeps TensorFlow out of the command line's checks
    import keras  # pylint: disable=import-outside-toplevel
    if flags.meta_optimizer == "adam":
        return keras.optimizers.Adam(flags.meta_lr, epsilon=ADAM_EPSILON)
    if nesterov:
        return keras.optimizers.SGD(flags.meta_lr, momentum=0.9, nesterov=True)
    return keras.optimizers.SGD(flags.meta_lr)


def augmentation(flags, ds, kind: str | None = None):
    """A batch augmentation of images (`kind`, default --augment), or None for none;
    'flip' is the weak augmentation without its crop."""
    kind = flags.augment if kind is None else kind
    if kind == "none":
        return None
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    pad = {"flip": 0}.get(kind, augment.CROP_PAD)
    return augment.build("weak" if kind == "flip" else kind,
                         image_shape=ds.train.inputs.element_shape, seed=flags.seed,
                         flip=flags.augment_flip, pad=pad)


def training_batches(flags, setup, steps_per_epoch: int, first_epoch: int = 0):
    """Endless batches {'image', 'label'[, 'is_noisy']} of the training samples with their
    noisy labels, through --augment, `steps_per_epoch` per epoch from `first_epoch` on
    (`pipelines.epoch_batches`: each epoch a function of the seed and its number; a
    re-sampled training subset drawn anew each epoch)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import pipelines  # pylint: disable=import-outside-toplevel
    fields = {"label": setup.noisy_labels.astype(np.int32)}
    is_noisy = noise_flags(setup)
    if is_noisy is not None:
        fields["is_noisy"] = is_noisy
    return pipelines.epoch_batches(
        setup.dataset.train.inputs, setup.train_indices, batch_size=flags.batch_size,
        seed=flags.seed, steps_per_epoch=steps_per_epoch, first_epoch=first_epoch,
        fields=fields, augment=augmentation(flags, setup.dataset),
        indices_of_epoch=getattr(setup, "train_of_epoch", None))


# ---------------------------------------------------------------- around the fit
def tensorboard_header(flags, folder, charts=None) -> None:
    """The run's hyper-parameters (HParams tab) and the custom-scalars layout."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.runs import tb_views  # pylint: disable=import-outside-toplevel
    tb_views.write_hparams(folder.tensorboard, flags.hparams())
    if charts is None:
        tb_views.write_layout(folder.tensorboard)
    else:
        tb_views.write_layout(folder.tensorboard, charts)


def validation_batches(flags, setup):
    """(inputs, labels) batches of the held-out part or of the val split, for fit's
    validation_data (Keras logs val_accuracy and val_loss); None without either."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    import tensorflow as tf
    from clid_tf.data import pipelines
    ds = setup.dataset
    if setup.val_indices is not None:  # scored against their noisy labels
        inputs, indices, labels = ds.train.inputs, setup.val_indices, setup.noisy_labels
    elif ds.val is not None:
        inputs, indices, labels = ds.val.inputs, None, ds.val.labels
    else:
        return None
    table = tf.constant(labels.astype("int32"))  # by input index
    return pipelines.ordered_batches(inputs, indices, batch_size=flags.eval_batch_size).map(
        lambda ids, x: (x, tf.gather(table, ids)))


def export(flags, networks, epochs, ds, folder, *, overwrite: bool) -> list:
    """The SavedModel of the exported `networks` (their logits averaged), unless
    --export=none. Returns the exported epochs (1-based; empty for none)."""
    if flags.export == "none":
        return []
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.runs import export as export_lib  # pylint: disable=import-outside-toplevel
    export_lib.export_saved_model(
        networks, folder.saved_model, input_shape=ds.train.inputs.element_shape,
        input_dtype=ds.train.inputs.dtype, class_names=ds.class_names,
        decode=getattr(ds.train.inputs, "decode", None),  # file data: decode as trained
        overwrite=overwrite)  # a resumed run may have exported before it died
    return list(epochs)


def selection_augmentation(flags, ds):
    """The augmentation the label-free selection scores the meta set through:
    --select_augment (or the trainer's default for it), none for feature vectors unless
    asked for."""
    if len(ds.train.inputs.element_shape) != 3 and not flags.given("select_augment"):
        return None
    return augmentation(flags, ds, flags.select_augment)


def meta_net_results(flags) -> dict:
    """results.json's meta_net and virtual_step: the trainer's defaults where the flags left
    them open ({} for --method=ce, which trains none)."""
    if flags.method == "ce":
        return {}
    return {"meta_net": flags.meta_net, "virtual_step": flags.virtual_step}
