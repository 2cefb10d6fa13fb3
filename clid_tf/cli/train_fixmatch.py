"""--trainer=fixmatch|flexmatch from the flags (SOTA_SSL.md Part B), and the meta trainer on
the same labeled part (`LABELED_META`: --trainer=meta --num_labels=N).

The same three parts as every trainer (`cli.commands.TRAINERS`): `prepare_setup` (numpy
only: the labeled/unlabeled split, the noise on the labeled part, the meta set),
`split_arrays` (what split.npz holds) and `train` (fit, evaluate, export). An epoch is
--eval_every iterations; after each one the EMA network is scored on the test set and by
its meta-set CLID, and the lowest-CLID evaluation's own EMA weights are kept and exported.
"""

from __future__ import annotations

import types

from clid_tf.runs import folder as run_folder
from clid_tf.cli import training
from clid_tf.cli.flagdefs import FLAGS
from clid_tf.errors import RunError

LAMBDA_U = 1.0  # FixMatch / FlexMatch's ulb_loss_ratio (B.7)
CROP_RATIO = 0.875  # USB's crop_ratio: reflect padding = side * (1 - 0.875), 4 px on 32x32


def prepare_setup():
    """The run's `ssl_splits.SslSetup` from the flags; bad input raises RunError."""
    from clid_tf.data import ssl_splits  # pylint: disable=import-outside-toplevel
    dataset = training.load_dataset()
    if len(dataset.train.inputs.element_shape) != 3:
        raise RunError(f"--num_labels needs images (weak and strong views); {FLAGS.dataset} "
                       "holds feature vectors")
    semi = FLAGS.trainer != "meta"
    try:
        return ssl_splits.prepare(
            dataset, num_labels=FLAGS.num_labels, noise=training.default_noise(dataset),
            noise_rate=FLAGS.noise_rate, seed=FLAGS.seed, meta_source=FLAGS.ssl_meta_source,
            meta_size=FLAGS.meta_size, include_labeled_in_unlabeled=FLAGS.include_lb_to_ulb,
            val_split=FLAGS.val_split, batch_size=FLAGS.batch_size,
            unlabeled_batch_size=FLAGS.uratio * FLAGS.batch_size if semi else 0,
            meta_batch_size=FLAGS.meta_batch_size)
    except ValueError as error:
        raise RunError(str(error)) from error


def split_arrays(setup) -> dict:
    """split.npz: the labeled part's noisy labels (-1: no label), the parts' indices."""
    return {**run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                      setup.meta_indices, setup.val_indices),
            "unlabeled_indices": setup.unlabeled_indices}


def train(setup, folder: run_folder.RunFolder, *, resuming: bool) -> dict:
    """Builds the model, streams and callbacks from FLAGS, fits, exports."""
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf.runs import callbacks as callbacks_lib
    from clid_tf.data import pipelines as data
    from clid_tf.evaluation import selection as selection_lib
    from clid_tf.data import inputs as sources
    from clid_tf.data import ssl_splits
    from clid_tf.trainers.fixmatch import streams as ssl_streams
    from clid_tf.runs import tb_views
    if not resuming:
        training.tensorboard_header(folder)
    ds = setup.dataset
    model = compiled_model(setup)
    weak, strong = views(ds)
    selection = selection_lib.ClidSelection(
        data.Part(ds.train.inputs, setup.selection_indices),
        test=None if ds.test is None else data.Part(ds.test.inputs, None, ds.test.labels),
        batch_size=min(FLAGS.meta_batch_size, len(setup.selection_indices)), tau=FLAGS.tau,
        keep=FLAGS.select_keep, seed=FLAGS.seed, eval_batch_size=FLAGS.eval_batch_size,
        augment=weak if FLAGS.select_augment is None else training.augmentation(
            ds, FLAGS.select_augment), directory=folder.selected_weights,
        backbone=model.ema_backbone)
    run_state = callbacks_lib.RunState(folder.checkpoints, model, selection)
    start = run_state.restore() if resuming else 0
    if start:
        print(f"resuming after evaluation {start} of {FLAGS.epochs}")
    is_noisy = training.noise_flags(setup)
    stream = ssl_streams.ssl_stream(
        ds.train.inputs, labeled=setup.train_indices, labels=setup.noisy_labels,
        unlabeled=setup.unlabeled_indices,
        meta=None if model.meta_net is None else setup.meta_indices, weak=weak,
        strong=strong, batch_size=FLAGS.batch_size,
        unlabeled_batch_size=FLAGS.uratio * FLAGS.batch_size,
        meta_batch_size=FLAGS.meta_batch_size,
        meta_views=("weak", "strong") if setup.meta_source == "unlabeled" else ("weak",),
        seed=FLAGS.seed, steps_per_epoch=FLAGS.eval_every, first_epoch=start,
        is_noisy=is_noisy, with_positions=FLAGS.trainer == "flexmatch")
    labeled = setup.train_indices[tb_views.sample_indices(len(setup.train_indices), 2000,
                                                          FLAGS.seed)]
    model.fit(stream, initial_epoch=start, epochs=FLAGS.epochs,
              steps_per_epoch=FLAGS.eval_every, verbose=FLAGS.verbose, shuffle=False,
              validation_data=training.validation_batches(setup),
              callbacks=[
                  callbacks_lib.WarmUp(FLAGS.warmup_epochs),
                  selection,  # adds logs: before the callbacks that record them
                  tb_views.StepTimer(),
                  tb_views.MetaViews(
                      folder.tensorboard, sources.read_numpy(ds.train.inputs, labeled),
                      setup.noisy_labels[labeled],
                      None if is_noisy is None else is_noisy[labeled],
                      sample_size=len(labeled), seed=FLAGS.seed,
                      eval_batch_size=FLAGS.eval_batch_size),
                  keras.callbacks.TensorBoard(folder.tensorboard),
                  callbacks_lib.NonFiniteGuard(FLAGS.eval_every),
                  run_state])
    exported = training.export(model, selection, ds, folder, overwrite=resuming,
                               last=model.ema_backbone)
    results = training.results_of(setup, selection, run_state.history, exported)
    results.update(ssl_splits.split_report(setup), eval_every=FLAGS.eval_every,
                   selected_step=results["selected_epoch"] * FLAGS.eval_every,
                   algorithm=FLAGS.trainer, weights="ema")
    return results


def views(ds):
    """(weak, strong) augmentations of the dataset's images: flip (--augment_flip) and a
    reflect-padded crop of side * (1 - 0.875) pixels (at least 1), strong adding
    RandAugment and Cutout (`clid_tf.data.augment`)."""
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    shape = ds.train.inputs.element_shape
    pad = max(1, round(min(shape[:2]) * (1 - CROP_RATIO)))
    return tuple(augment.build(kind, image_shape=shape, seed=FLAGS.seed,
                               flip=FLAGS.augment_flip, pad=pad)
                 for kind in ("weak", "strong"))


def compiled_model(setup):
    """The flags' FixMatchModel under the flags' strategy, compiled with both optimizers."""
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf.trainers.fixmatch import model as fixmatch
    from clid_tf.core import lookahead
    from clid_tf.metanets import wnet as meta_nets
    strategy = training.start_strategy()
    ds = setup.dataset
    with strategy.scope():
        net = training.build_backbone(setup, sync_batchnorm=strategy.num_replicas_in_sync > 1,
                                     seed=FLAGS.seed)
        loss_net = None if FLAGS.method == "ce" else meta_nets.build(
            "wnet", num_classes=ds.num_classes, feature_dim=net.feature_dim,
            seed=FLAGS.seed, normalize=False)
        model = fixmatch.FixMatchModel(
            net, loss_net, algorithm=FLAGS.trainer,
            num_unlabeled=len(setup.unlabeled_indices),
            lambda_u=LAMBDA_U if FLAGS.lambda_u is None else FLAGS.lambda_u,
            p_cutoff=FLAGS.p_cutoff, thresh_warmup=FLAGS.thresh_warmup,
            ema_decay=FLAGS.ema_decay, meta_objective=FLAGS.method, tau=FLAGS.tau,
            meta_grad=FLAGS.meta_grad, meta_scope=FLAGS.meta_scope,
            virtual_step=training.virtual_step_kind(),
            weight_decay=FLAGS.weight_decay, meta_weight_decay=FLAGS.meta_weight_decay,
            no_decay=lookahead.bn_and_bias(net))
        meta_optimizer = None
        if loss_net is not None:  # B.3: SGD with Nesterov momentum 0.9, or Adam
            meta_optimizer = (keras.optimizers.Adam(FLAGS.meta_lr)
                              if FLAGS.meta_optimizer == "adam" else
                              keras.optimizers.SGD(FLAGS.meta_lr, momentum=0.9, nesterov=True))
        model.compile(training.classifier_optimizer(FLAGS.eval_every, nesterov=True),
                      meta_optimizer, jit_compile=FLAGS.jit_compile)
    return model


# --trainer=meta --num_labels=N: the meta trainer on the labeled part alone (the
# supervised-only baseline), its meta set from --ssl_meta_source.
LABELED_META = types.SimpleNamespace(prepare_setup=prepare_setup, split_arrays=split_arrays,
                                     train=training.train)
