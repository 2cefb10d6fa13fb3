"""DivideMix's adapter (`--trainer=dividemix`): two backbones, two VRI rectifiers (or none
for plain DivideMix, `--method=ce`), `DivideMixModel`, the per-epoch `Streams`, one
`ClidSelection` per network on its own meta set and the two-network evaluation, built
from the flags as a Python user would build them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clid_tf import metanets
from clid_tf.data import datasets
from clid_tf.data import meta_sets
from clid_tf.errors import RunError
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import parts
from clid_tf.trainers import runner

# Class-dependent noise: DivideMix adds its confidence penalty to the warm-up.
ASYMMETRIC = ("pair", "flip", "flip2", "asym_cifar10", "asym_cifar100",
              "asym_cifar100_superclass")


class Setup(NamedTuple):
    """A DivideMix run's data: `splits.Setup`'s fields, with one meta set per network.

    meta_sets: (int64 [M], int64 [M]) training-split indices of each network's label-free
      meta set (also what its CLID selection scores; drawn for --method=ce too).
    noise: the noise kind of the training labels (`parts.default_noise`).
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_sets: tuple
    val_indices: np.ndarray | None
    noise: str


def prepare_setup(flags) -> Setup:
    """The run's data: noise, held-out part and the two meta sets (numpy only)."""
    base = parts.noisy_setup(flags)
    pool = base.train_indices
    second = pool[meta_sets.random_subset(len(pool), size=len(base.selection_indices),
                                          seed=flags.seed + meta_sets.SECOND_SET_SEED_OFFSET)]
    return Setup(base.dataset, base.noisy_labels, pool, (base.selection_indices, second),
                 base.val_indices, parts.default_noise(flags, base.dataset))


def split_arrays(flags, setup: Setup) -> dict:
    """split.npz: the meta trainer's arrays (net 1's meta set as meta_indices) and net 2's."""
    del flags
    arrays = run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                     setup.meta_sets[0], setup.val_indices)
    return {**arrays, "meta_indices_net2": setup.meta_sets[1]}


def build(flags, setup: Setup):
    """The runner's `Plan`: `DivideMixModel` with its per-epoch `Streams` (whose loss
    history the checkpoints hold), the per-epoch learning rate, one selection per network
    on its own meta set, the warm-up's epochs out of the selections."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines
    from clid_tf.trainers.dividemix import model as dividemix_model
    ds = setup.dataset
    model = compiled_model(flags, setup)
    streams = streams_of(flags, setup)
    return runner.Plan(
        model, lambda start: streams, state=streams.checkpoint_parts(),
        callbacks=[dividemix_model.EpochLearningRate(epoch_lr(flags), model.net_optimizers)],
        meta_sets=[pipelines.Part(ds.train.inputs, meta) for meta in setup.meta_sets],
        eligible_from=flags.warmup_epochs + 1,  # the warm-up's CE epochs stay out
        charts=CHARTS)


def epoch_lr(flags):
    """epoch -> the flags' learning rate of that epoch (DivideMix sets it per epoch)."""
    schedule = parts.lr_schedule(flags, 1)  # one "step" per epoch
    return schedule if callable(schedule) else lambda epoch: schedule


def build_networks(flags, setup: Setup, *, sync_batchnorm: bool) -> tuple[list, list | None]:
    """The two backbones (seeds seed, seed + 1) and, unless --method=ce, two meta-nets."""
    nets = [parts.build_backbone(flags, setup, sync_batchnorm=sync_batchnorm,
                                 seed=flags.seed + k) for k in (0, 1)]
    if flags.method == "ce":
        return nets, None
    return nets, [metanets.build(flags.meta_net, num_classes=setup.dataset.num_classes,
                                 feature_dim=net.feature_dim, seed=flags.seed + k)
                  for k, net in enumerate(nets)]


def compiled_model(flags, setup: Setup):
    """`DivideMixModel` of the flags under the flags' strategy, with its four optimizers."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf.trainers.dividemix import model as dividemix_model
    strategy = parts.start_strategy(flags)
    with strategy.scope():
        nets, meta_nets = build_networks(flags, setup,
                                         sync_batchnorm=strategy.num_replicas_in_sync > 1)
        try:
            model = dividemix_model.DivideMixModel(
                nets, meta_nets, meta_objective=flags.method if meta_nets else "clid",
                tau=flags.tau, meta_grad=flags.meta_grad, meta_scope=flags.meta_scope,
                virtual_step=flags.virtual_step, weight_decay=flags.weight_decay,
                meta_weight_decay=flags.meta_weight_decay, warmup_epochs=flags.warmup_epochs,
                warmup_penalty=setup.noise in ASYMMETRIC, p_threshold=flags.p_threshold,
                alpha=flags.mixup_alpha, temperature=flags.sharpen_temperature,
                lambda_u=flags.lambda_u, rampup_epochs=flags.rampup_epochs,
                clip_norm=flags.clip_norm, guess_bn_mode=flags.guess_bn_mode,
                seed=flags.seed)
        except ValueError as error:  # e.g. a meta scope the backbone cannot have
            raise RunError(str(error)) from error
        model.compile([keras.optimizers.SGD(flags.lr, momentum=flags.momentum) for _ in nets],
                      None if meta_nets is None else [parts.meta_optimizer(flags)
                                                      for _ in meta_nets],
                      jit_compile=False)  # --jit_compile is refused (the trainer's table)
    return model


def streams_of(flags, setup: Setup):
    """The training samples, both meta sets and the augmentations as `Streams`."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines
    from clid_tf.trainers.dividemix import streams
    ds, idx = setup.dataset, setup.train_indices
    clean = ds.train.clean_labels
    return streams.Streams(
        pipelines.Part(ds.train.inputs, idx, setup.noisy_labels[idx]),
        meta_sets=None if flags.method == "ce" else [pipelines.Part(ds.train.inputs, m)
                                                     for m in setup.meta_sets],
        batch_size=flags.batch_size, meta_batch_size=flags.meta_batch_size, seed=flags.seed,
        augment=parts.augmentation(flags, ds), meta_augment=meta_augmentation(flags, ds),
        max_steps=flags.steps_per_epoch,
        is_clean=None if clean is None else setup.noisy_labels[idx] == clean[idx],
        eval_batch_size=flags.eval_batch_size,
        average_epochs=5 if setup.noise == "sym" and flags.noise_rate >= 0.9 else 1)


def meta_augmentation(flags, ds):
    """Weak crop + flip for the meta batches whenever training augments, else none."""
    return None if flags.augment == "none" else parts.augmentation(flags, ds, "weak")


# TensorBoard custom scalars of a DivideMix run (title, tags).
CHARTS = (
    ("test accuracy: two nets, each net, label-free selections",
     "epoch_test_accuracy", "epoch_net1_test_accuracy", "epoch_net2_test_accuracy",
     "epoch_selected_accuracy", "epoch_ensemble5_accuracy"),
    ("meta-set CLID per net", "epoch_net1_meta_set_clid", "epoch_net2_meta_set_clid"),
    ("labeled part: size", "epoch_net1_labeled", "epoch_net2_labeled"),
    ("labeled part: precision and recall", "epoch_net1_labeled_precision",
     "epoch_net1_labeled_recall", "epoch_net2_labeled_precision",
     "epoch_net2_labeled_recall"),
    ("loss terms", "epoch_net1_l_x", "epoch_net1_l_u", "epoch_net1_penalty",
     "epoch_net2_l_x", "epoch_net2_l_u", "epoch_net2_penalty"),
    ("lambda_u ramp and meta CLID", "epoch_net1_lambda_u", "epoch_net2_lambda_u",
     "epoch_net1_meta_clid", "epoch_net2_meta_clid"),
)
