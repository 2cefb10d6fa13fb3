"""FixMatch's and FlexMatch's adapter (`--trainer=fixmatch|flexmatch --num_labels=N`): the
labeled/unlabeled split with noise on the labeled part, `FixMatchModel` with a loss-net
trained by CLID (or none, `--method=ce`), the labeled/unlabeled/meta stream, built from the
flags. An epoch is --eval_every iterations; after each one the EMA network is scored on
the test set and by its meta-set CLID, and the lowest-CLID evaluation's own EMA weights are
kept and exported.
"""

from __future__ import annotations

from clid_tf import metanets
from clid_tf.data import ssl_splits
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import parts
from clid_tf.trainers import runner


def prepare_setup(flags):
    """The run's `ssl_splits.SslSetup` (numpy only); bad input raises RunError."""
    return parts.semi_supervised_setup(flags,
                                       unlabeled_batch_size=flags.uratio * flags.batch_size)


def split_arrays(flags, setup) -> dict:
    """split.npz: the labeled part's noisy labels (-1: no label), the parts' indices."""
    del flags
    return {**run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                      setup.meta_indices, setup.val_indices),
            "unlabeled_indices": setup.unlabeled_indices}


def build(flags, setup):
    """The runner's `Plan`: `FixMatchModel`, its labeled/unlabeled/meta stream, an epoch
    of --eval_every iterations, the EMA network scored and selected (through the weak view
    when --select_augment=weak), meta weights shown on labeled samples."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.runs import callbacks as run_callbacks
    from clid_tf.runs import tb_views
    from clid_tf.trainers.fixmatch import streams
    model = compiled_model(flags, setup)
    weak, strong = views(flags, setup.dataset)

    def stream(start):
        return streams.ssl_stream(
            setup.dataset.train.inputs, labeled=setup.train_indices,
            labels=setup.noisy_labels, unlabeled=setup.unlabeled_indices,
            meta=None if model.meta_net is None else setup.meta_indices, weak=weak,
            strong=strong, batch_size=flags.batch_size,
            unlabeled_batch_size=flags.uratio * flags.batch_size,
            meta_batch_size=flags.meta_batch_size,
            meta_views=("weak", "strong") if setup.meta_source == "unlabeled" else ("weak",),
            seed=flags.seed, steps_per_epoch=flags.eval_every, first_epoch=start,
            is_noisy=parts.noise_flags(setup), with_positions=flags.trainer == "flexmatch")

    def results(found):
        return {**parts.meta_net_results(flags), **ssl_splits.split_report(setup),
                "eval_every": flags.eval_every,
                "selected_step": found["selected_epoch"] * flags.eval_every,
                "algorithm": flags.trainer, "weights": "ema"}

    labeled = tb_views.sample_indices(len(setup.train_indices), 2000, flags.seed)
    return runner.Plan(
        model, stream, steps_per_epoch=flags.eval_every,  # the EMA network predicts
        callbacks=[run_callbacks.WarmUp(flags.warmup_epochs)],
        selection_augment=weak if flags.select_augment == "weak" else runner.FROM_FLAGS,
        views=setup.train_indices[labeled], unit="evaluation", results=results)


def views(flags, ds):
    """(weak, strong) augmentations of the dataset's images (`streams.views`): flip
    (--augment_flip), a reflect-padded crop, strong adding --ssl_strong_augment (USB's
    RandAugment by default: ruofanhu/CLID-MU@5cd0608,
    semi/semilearn/datasets/augmentation/randaugment.py)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.trainers.fixmatch import streams  # pylint: disable=import-outside-toplevel
    return streams.views(ds.train.inputs.element_shape, seed=flags.seed,
                         flip=flags.augment_flip, strong=flags.ssl_strong_augment)


def compiled_model(flags, setup):
    """The flags' FixMatchModel under the flags' strategy, compiled with both optimizers."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.core import lookahead
    from clid_tf.trainers.fixmatch import model as fixmatch_model
    strategy = parts.start_strategy(flags)
    with strategy.scope():
        net = parts.build_backbone(flags, setup,
                                   sync_batchnorm=strategy.num_replicas_in_sync > 1,
                                   seed=flags.seed)
        loss_net = None if flags.method == "ce" else metanets.build(
            flags.meta_net, num_classes=setup.dataset.num_classes,
            feature_dim=net.feature_dim, seed=flags.seed,
            normalize=False)  # WNet unnormalised, the authors' loss-net; others ignore it
        model = fixmatch_model.FixMatchModel(
            net, loss_net, algorithm=flags.trainer,
            num_unlabeled=len(setup.unlabeled_indices), lambda_u=flags.lambda_u,
            p_cutoff=flags.p_cutoff, thresh_warmup=flags.thresh_warmup,
            ema_decay=flags.ema_decay, meta_objective=flags.method, tau=flags.tau,
            meta_grad=flags.meta_grad, meta_scope=flags.meta_scope,
            virtual_step=flags.virtual_step, weight_decay=flags.weight_decay,
            meta_weight_decay=flags.meta_weight_decay, no_decay=lookahead.bn_and_bias(net))
        model.compile(parts.classifier_optimizer(flags, flags.eval_every, nesterov=True),
                      None if loss_net is None else parts.meta_optimizer(flags, nesterov=True),
                      jit_compile=flags.jit_compile)
    return model
