"""--trainer=dividemix: two networks, GMM co-divide, MixMatch (SOTA_SSL.md Part A).

--method=clid trains each network's VRI rectifier by CLID through the real optimizer's
virtual step (DivideMix + VRI + CLID, Train_cifar_vri.py); --method=ce is plain DivideMix
(no meta-net), the baseline. The parts handed to the library are what a Python user would
build: two backbones, two VRINets, `DivideMixModel`, `dividemix_data.Streams`, one
`ClidSelection` per network on its own meta set, `TwoNetEvaluation`.
"""

from __future__ import annotations

import types
from typing import NamedTuple

import numpy as np

from clid_tf.data import datasets
from clid_tf.data import meta_sets as meta_sets_lib
from clid_tf.runs import folder as run_folder
from clid_tf.cli import flagdefs, training
from clid_tf.cli.flagdefs import FLAGS, training_flag_names
from clid_tf.errors import RunError

METHODS = ("ce", "clid", "entropy")
# Class-dependent noise: DivideMix adds its confidence penalty to the warm-up (A.4 step 2).
ASYMMETRIC = ("pair", "flip", "flip2", "asym_cifar10", "asym_cifar100",
              "asym_cifar100_superclass")
DEFAULT_LAMBDA_U = 150.0  # the authors' value for every run (TCV:26)
IN_SAMPLE_CHECKPOINTS = 3


class Setup(NamedTuple):
    """A DivideMix run's data: `splits.Setup`'s fields, with one meta set per network.

    meta_sets: (int64 [M], int64 [M]) training-split indices of each network's label-free
      meta set (also what its CLID selection scores; drawn for --method=ce too).
    noise: the noise kind of the training labels (`training.default_noise`).
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_sets: tuple
    val_indices: np.ndarray | None
    noise: str


def check_flags() -> None:
    """One line for the first flag combination this trainer cannot run."""
    problems = (
        (FLAGS.method not in METHODS,
         f"--method={FLAGS.method}: --trainer=dividemix trains with ce (plain DivideMix), "
         "clid or entropy (a label-free meta objective of the VRI rectifier)"),
        (FLAGS.method != "ce" and training.meta_net_kind() != "vri",
         f"--meta_net={FLAGS.meta_net}: --trainer=dividemix rectifies the logits with "
         "--meta_net=vri (its soft mixed targets give WNet no per-sample loss to weight)"),
        (FLAGS.meta_every != 1,
         "--meta_every: --trainer=dividemix makes a meta step on every step"),
        (FLAGS["vri_kl"].present,
         "--vri_kl: --trainer=dividemix logs VRI's KL but trains nothing with it (it is "
         "inert in the reference, SOTA_SSL.md A.12)"),
        (FLAGS.mixed_precision == "mixed_float16",
         "--mixed_precision=mixed_float16: --trainer=dividemix has no loss scaling; use "
         "mixed_bfloat16 or none"),
        (FLAGS.jit_compile,
         "--jit_compile: --trainer=dividemix draws its mixup weight from a Beta "
         "distribution, whose sampler (StatelessRandomGamma) XLA cannot compile"),
        (FLAGS.audit and FLAGS.audit_folds > 0,
         "--audit with --trainer=dividemix scores in sample only: add --audit_folds=0"),
    )
    for refused, message in problems:
        if refused:
            raise RunError(message)


def prepare_setup() -> Setup:
    """The run's data: noise, held-out part and the two meta sets (numpy only)."""
    check_flags()
    base = training.prepare_setup()
    pool = base.train_indices
    second = pool[meta_sets_lib.random_subset(len(pool), size=len(base.selection_indices),
                                              seed=FLAGS.seed + 7919)]
    return Setup(base.dataset, base.noisy_labels, pool, (base.selection_indices, second),
                 base.val_indices, training.default_noise(base.dataset))


def split_arrays(setup: Setup) -> dict:
    """split.npz: the meta trainer's arrays (net 1's meta set as meta_indices) and net 2's."""
    arrays = run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                     setup.meta_sets[0], setup.val_indices)
    return {**arrays, "meta_indices_net2": setup.meta_sets[1]}


def train(setup: Setup, folder: run_folder.RunFolder, *, resuming: bool) -> dict:
    """Builds both networks, their streams and callbacks from FLAGS, fits, exports."""
    # pylint: disable=import-outside-toplevel
    import keras
    from clid_tf.runs import callbacks as callbacks_lib
    from clid_tf.evaluation import two_nets as dividemix_eval
    from clid_tf.trainers.dividemix import model as dividemix_model
    from clid_tf.runs import tb_views
    if not resuming:
        tb_views.write_hparams(folder.tensorboard, {
            name: FLAGS[name].value for name in sorted(training_flag_names())
            if name not in ("workdir", "resume", "verbose")})
        tb_views.write_layout(folder.tensorboard, CHARTS)
    ds = setup.dataset
    model = compiled_model(setup)
    selections = selections_of(setup, folder, model.backbones)
    evaluation = dividemix_eval.TwoNetEvaluation(
        selections, None if ds.test is None else ds.test.labels)
    streams = streams_of(setup)
    parts = {**model.checkpoint_parts(), **streams.checkpoint_parts()}
    run_state = callbacks_lib.RunState(  # checkpoints the networks and the co-divide's state
        folder.checkpoints, types.SimpleNamespace(checkpoint_parts=lambda: parts), selections)
    start = run_state.restore() if resuming else 0
    if start:
        print(f"resuming after epoch {start} of {FLAGS.epochs}")
    model.fit(streams, epochs=FLAGS.epochs, initial_epoch=start, verbose=FLAGS.verbose,
              validation_data=training.validation_batches(setup), callbacks=[
                  dividemix_model.EpochLearningRate(epoch_lr(), model.net_optimizers),
                  *selections, evaluation,  # add logs: before the callbacks that record them
                  tb_views.StepTimer(), keras.callbacks.TensorBoard(folder.tensorboard),
                  callbacks_lib.NonFiniteGuard(), run_state])
    export(model, selections, ds, folder, overwrite=resuming)
    return results_of(setup, selections, evaluation, run_state.history)


def epoch_lr():
    """epoch -> the flags' learning rate of that epoch (DivideMix sets it per epoch)."""
    schedule = training.lr_schedule(1)  # one "step" per epoch
    return schedule if callable(schedule) else lambda epoch: schedule


def build_networks(setup: Setup, *, sync_batchnorm: bool) -> tuple[list, list | None]:
    """The two backbones (seeds seed, seed + 1) and, unless --method=ce, two VRINets."""
    from clid_tf.metanets import vri  # pylint: disable=import-outside-toplevel
    nets = [training.build_backbone(setup, sync_batchnorm=sync_batchnorm, seed=FLAGS.seed + k)
            for k in (0, 1)]
    if FLAGS.method == "ce":
        return nets, None
    return nets, [vri.VRINet(setup.dataset.num_classes, net.feature_dim, seed=FLAGS.seed + k)
                  for k, net in enumerate(nets)]


def compiled_model(setup: Setup):
    """`DivideMixModel` of the flags under the flags' strategy, with its four optimizers."""
    import keras  # pylint: disable=import-outside-toplevel
    strategy = training.start_strategy()
    with strategy.scope():
        nets, meta_nets = build_networks(setup, sync_batchnorm=strategy.num_replicas_in_sync > 1)
        try:
            model = _model(nets, meta_nets, warmup_penalty=setup.noise in ASYMMETRIC)
        except ValueError as error:  # e.g. a meta scope the backbone cannot have
            raise RunError(str(error)) from error
        model.compile([keras.optimizers.SGD(FLAGS.lr, momentum=FLAGS.momentum) for _ in nets],
                      None if meta_nets is None else [training.meta_optimizer()
                                                      for _ in meta_nets],
                      jit_compile=False)  # --jit_compile is refused (check_flags)
    return model


def _model(nets, meta_nets, *, warmup_penalty: bool):
    """`DivideMixModel` of the flags."""
    from clid_tf.trainers.dividemix import model as dividemix_model  # pylint: disable=import-outside-toplevel
    return dividemix_model.DivideMixModel(
        nets, meta_nets, meta_objective=FLAGS.method if meta_nets else "clid", tau=FLAGS.tau,
        meta_grad=FLAGS.meta_grad, meta_scope=FLAGS.meta_scope,
        virtual_step=training.virtual_step_kind(), weight_decay=FLAGS.weight_decay,
        meta_weight_decay=FLAGS.meta_weight_decay, warmup_epochs=FLAGS.warmup_epochs,
        warmup_penalty=warmup_penalty, p_threshold=FLAGS.p_threshold,
        alpha=FLAGS.mixup_alpha, temperature=FLAGS.sharpen_temperature,
        lambda_u=DEFAULT_LAMBDA_U if FLAGS.lambda_u is None else FLAGS.lambda_u,
        rampup_epochs=FLAGS.rampup_epochs, clip_norm=FLAGS.clip_norm,
        guess_bn_mode=FLAGS.guess_bn_mode, seed=FLAGS.seed)


def streams_of(setup: Setup):
    """The training samples, both meta sets and the augmentations as `Streams`."""
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.dividemix import streams as dividemix_data
    ds, idx = setup.dataset, setup.train_indices
    clean = ds.train.clean_labels
    return dividemix_data.Streams(
        data.Part(ds.train.inputs, idx, setup.noisy_labels[idx]),
        meta_sets=None if FLAGS.method == "ce" else [data.Part(ds.train.inputs, m)
                                                     for m in setup.meta_sets],
        batch_size=FLAGS.batch_size, meta_batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed,
        augment=training.augmentation(ds), meta_augment=meta_augmentation(ds),
        max_steps=FLAGS.steps_per_epoch,
        is_clean=None if clean is None else setup.noisy_labels[idx] == clean[idx],
        eval_batch_size=FLAGS.eval_batch_size,
        average_epochs=5 if setup.noise == "sym" and FLAGS.noise_rate >= 0.9 else 1)


def meta_augmentation(ds):
    """Weak crop + flip for the meta batches whenever training augments (A.12), else none."""
    return None if FLAGS.augment == "none" else training.augmentation(ds, "weak")


def selections_of(setup: Setup, folder: run_folder.RunFolder, backbones) -> list:
    """One `ClidSelection` per network, on its own meta set."""
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines as data
    from clid_tf.evaluation import selection as selection_lib
    ds = setup.dataset
    test = None if ds.test is None else data.Part(ds.test.inputs, None, ds.test.labels)
    return [selection_lib.ClidSelection(
        data.Part(ds.train.inputs, meta), test=test,
        batch_size=min(FLAGS.meta_batch_size, len(meta)), tau=FLAGS.tau,
        keep=FLAGS.select_keep, seed=FLAGS.seed, eval_batch_size=FLAGS.eval_batch_size,
        augment=training.augmentation(ds, FLAGS.select_augment),
        directory=folder.selected_weights, backbone=backbones[k], prefix=f"net{k + 1}_")
        for k, meta in enumerate(setup.meta_sets)]


def export(model, selections, ds, folder: run_folder.RunFolder, *, overwrite: bool) -> None:
    """--export: last = both final networks; selected = each network at its own lowest-CLID
    epoch; ensemble = the --select_keep lowest-CLID (network, epoch) entries of both pools.
    The SavedModel averages their logits."""
    if FLAGS.export == "none":
        return
    # pylint: disable=import-outside-toplevel
    from clid_tf.evaluation import two_nets as dividemix_eval
    from clid_tf.runs import export as export_lib
    if FLAGS.export == "last":
        networks = list(model.backbones)
    elif FLAGS.export == "selected":
        networks = dividemix_eval.selected_pair(selections)
    else:
        networks = dividemix_eval.merged_members(selections, FLAGS.select_keep)
    export_lib.export_saved_model(networks, folder.saved_model,
                                  input_shape=ds.train.inputs.element_shape,
                                  input_dtype=ds.train.inputs.dtype,
                                  class_names=ds.class_names, overwrite=overwrite)


def results_of(setup: Setup, selections, evaluation, history: dict) -> dict:
    """results.json: the meta trainer's keys for the two-network model (final/best = the
    summed logits, selected = each net at its lowest-CLID epoch, ensembles merged), each
    network's own selection under net1/net2, division and loss terms in the history."""
    from clid_tf.data import splits  # pylint: disable=import-outside-toplevel
    ds = setup.dataset
    merged = evaluation.summary()
    best = merged["kept"][0]
    results = {"selected_epoch": best["epoch"], "selected_net": best["net"],
               "selected": merged["selected"], "kept": merged["kept"],
               "class_names": list(ds.class_names), "export": FLAGS.export, "trainer": "dividemix"}
    accuracy = history.get("test_accuracy")
    if accuracy:
        top = int(np.argmax(accuracy))
        results.update(final_test_accuracy=accuracy[-1], best_test_accuracy=accuracy[top],
                       best_epoch=top + 1, **{k: merged[k] for k in (
                           "selected_accuracy", "merged_selected_accuracy",
                           "ensemble3_accuracy", "ensemble5_accuracy")})
    for k, selection in enumerate(selections):
        summary = selection.summary()
        results[f"net{k + 1}"] = {key: summary[key] for key in (
            "selected_epoch", "kept", "selected_accuracy", "ensemble3_accuracy",
            "ensemble5_accuracy") if key in summary}
        if "test_accuracy" in summary:
            results[f"net{k + 1}"]["final_test_accuracy"] = summary["test_accuracy"][-1]
    val = history.get("val_accuracy")
    if val:
        results.update(final_val_accuracy=val[-1], best_val_accuracy=max(val),
                       selected_val_accuracy=val[best["epoch"] - 1])
    results.update(
        **splits.noise_report(setup), num_train=int(len(setup.train_indices)),
        num_meta=[int(len(m)) for m in setup.meta_sets],
        num_val=(int(len(setup.val_indices)) if setup.val_indices is not None
                 else 0 if ds.val is None else int(len(ds.val.labels))),
        num_test=0 if ds.test is None else int(len(ds.test.labels)),
        history={k: v for k, v in history.items() if k != "step_time"})
    return results


def in_sample_scores(folder: run_folder.RunFolder, setup: Setup):
    """`label_issues.Scores` of the training samples: softmax of the two networks' mean
    logits, averaged over the run's last checkpoints (no meta weights)."""
    # pylint: disable=import-outside-toplevel
    import os
    import tensorflow as tf
    from clid_tf.data import pipelines as data
    from clid_tf.evaluation import label_issues
    from clid_tf.evaluation import selection as selection_lib
    state = tf.train.get_checkpoint_state(folder.checkpoints)
    paths = [p if os.path.isabs(p) else os.path.join(folder.checkpoints, p)
             for p in (state.all_model_checkpoint_paths if state else [])]
    if not paths:
        raise RunError(f"no checkpoints in {folder.checkpoints} to audit in sample")
    nets, _ = build_networks(setup, sync_batchnorm=False)
    checkpoint = tf.train.Checkpoint(backbone1=nets[0], backbone2=nets[1])
    idx = setup.train_indices
    part = data.Part(setup.dataset.train.inputs, idx, setup.noisy_labels[idx])
    forwards = [selection_lib.inference_function(net) for net in nets]
    probs = []
    for path in run_folder.ranked_paths(paths)[-IN_SAMPLE_CHECKPOINTS:]:
        checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        logits = sum(selection_lib.predict_logits(forward, part,
                                                  batch_size=FLAGS.eval_batch_size)
                     for forward in forwards) / 2.0
        probs.append(tf.nn.softmax(logits.astype(np.float64)).numpy())
    return label_issues.Scores(np.mean(probs, axis=0), None)


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
