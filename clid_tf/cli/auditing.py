"""The audit command: which training labels of a run does a CLID-MU model doubt?

`python -m clid_tf.audit --workdir=RUN` reads RUN/flags.cfg (flags given on the command
line override it), rebuilds the run's data (the same noisy labels and training samples,
checked against RUN/split.npz) and ranks the training labels by suspicion
(`clid_tf.evaluation.label_issues`): with --audit_folds=K (5 by default) out of sample, K models
trained with the run's own settings, each scoring the fold it did not see; with
--audit_folds=0 in sample, with the run's last checkpoints (up to 3, averaged). It writes
RUN/audit.csv (one row per training sample, most suspicious first, named by file path for
file data and by index for arrays, labels by class name), results.json["audit"], and
TensorBoard scalars under RUN/tensorboard/audit. `--audit` on a training run does the same
after training.
"""

from __future__ import annotations

import os

import numpy as np

from clid_tf.evaluation import label_issues
from clid_tf.data import meta_sets
from clid_tf.runs import folder as run_folder
from clid_tf.data import splits
from clid_tf.cli import train_dividemix
from clid_tf.cli import training
from clid_tf.cli.flagdefs import AUDIT_GROUPS, AUDIT_HELP, FLAGS, fail, parse_flags
from clid_tf.errors import RunError

IN_SAMPLE_CHECKPOINTS = 3


def flags_parser(argv: list[str]) -> list[str]:
    """Parses the command line, then re-reads it on top of RUN/flags.cfg; --help, or one
    error line (a bad line of flags.cfg named by its number)."""
    parse_flags(argv, groups=AUDIT_GROUPS, help_overrides=AUDIT_HELP)
    if not FLAGS.workdir:
        fail("--workdir=RUN is required: the folder of a training run")
    folder = run_folder.RunFolder(FLAGS.workdir)
    try:
        folder.read_flags()  # a readable flags.cfg, or one line
    except run_folder.FolderError as error:
        fail(str(error))
    FLAGS.unparse_flags()
    return parse_flags([argv[0], f"--flagfile={folder.flags_path}", *argv[1:]])


def main(argv: list[str]) -> None:
    """Entry point of `python -m clid_tf.audit` (after `flags_parser`)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from absl import logging  # pylint: disable=import-outside-toplevel
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    folder = run_folder.RunFolder(FLAGS.workdir)
    trainer = train_dividemix if FLAGS.trainer == "dividemix" else training
    try:
        setup = trainer.prepare_setup()
        folder.check_split(trainer.split_arrays(setup))
        audit(folder, setup, folds=FLAGS.audit_folds)
    except (RunError, run_folder.FolderError, ValueError) as error:  # DataError included
        fail(str(error))


def audit(folder: run_folder.RunFolder, setup, *, folds: int) -> dict:
    """Audits the training labels of the run in `folder`; writes CSV, JSON and scalars.

    Returns:
      The metrics dict also stored as results.json["audit"]: `label_issues.metrics` keys
      plus folds, has_meta_net and csv.
    """
    idx = setup.train_indices
    given = setup.noisy_labels[idx]
    clean = setup.dataset.train.clean_labels
    clean = None if clean is None else clean[idx]
    scores = (in_sample_scores(folder, setup) if folds == 0
              else out_of_sample_scores(setup, folds=folds))
    names = setup.dataset.train.inputs.names()
    names = idx if names is None else names[idx]
    rows = label_issues.table(names, scores, given, class_names=setup.dataset.class_names,
                              clean=clean)
    label_issues.write_csv(folder.audit_csv, rows)
    found = {**label_issues.metrics(scores.probs, given, clean), "folds": folds,
             "has_meta_net": scores.weights is not None, "csv": folder.audit_csv}
    folder.merge_results("audit", found)
    write_scalars(os.path.join(folder.tensorboard, "audit"), found)
    print(summary(found))
    return found


def out_of_sample_scores(setup, *, folds: int) -> label_issues.Scores:
    """K-fold cross-fitting over the training samples, each fold trained with the flags."""
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    idx = setup.train_indices
    source = setup.dataset.train.inputs

    def train_fold(positions):
        fold_setup = fold_of(setup, idx[positions])
        steps = training.steps_per_epoch(fold_setup)
        model = training.compiled_model(fold_setup, steps)
        training.fit(model, fold_setup, steps)
        return lambda held: label_issues.score_part(
            model, data.Part(source, idx[held], setup.noisy_labels[idx[held]]),
            batch_size=FLAGS.eval_batch_size)

    return label_issues.cross_fit(
        setup.noisy_labels[idx], train_fold, folds=folds, seed=FLAGS.seed,
        on_fold=lambda k, n: print(f"audit: training fold {k} of {n} "
                                   f"({FLAGS.epochs} epochs)"))


def fold_of(setup, train_indices: np.ndarray):
    """The run's setup restricted to one fold's training samples: a label-free or
    small-loss meta set is drawn anew from them; a labelled one (already outside
    training) or one of validation images is kept. A fold trains on its part of the run's
    training subset, not re-drawn per epoch."""
    setup = setup._replace(train_of_epoch=None)
    redraw = FLAGS.method in (*splits.LABEL_FREE, *splits.SMALL_LOSS, "ce")
    if not redraw or setup.meta_split == "val":
        return setup._replace(train_indices=train_indices)
    size = min(len(setup.selection_indices), len(train_indices))
    if FLAGS.method in splits.SMALL_LOSS:
        meta, _ = meta_sets.balanced_split(setup.noisy_labels[train_indices], size=size,
                                           num_classes=setup.dataset.num_classes,
                                           seed=FLAGS.seed)
        meta = train_indices[meta]
        return setup._replace(train_indices=train_indices, meta_indices=meta,
                              meta_labels=setup.noisy_labels[meta], selection_indices=meta)
    meta = train_indices[meta_sets.random_subset(len(train_indices), size=size,
                                                 seed=FLAGS.seed)]
    redrawn = (None if setup.meta_of_epoch is None  # from the fold's own samples
               else splits.redrawn_meta(train_indices, meta, FLAGS.seed))
    return setup._replace(train_indices=train_indices, selection_indices=meta,
                          meta_indices=None if FLAGS.method == "ce" else meta,
                          meta_of_epoch=redrawn)


def in_sample_scores(folder: run_folder.RunFolder, setup) -> label_issues.Scores:
    """Mean scores of the training samples over the run's last checkpoints."""
    if FLAGS.trainer == "dividemix":  # the two networks' ensemble
        return train_dividemix.in_sample_scores(folder, setup)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    state = tf.train.get_checkpoint_state(folder.checkpoints)
    paths = list(state.all_model_checkpoint_paths) if state else []
    if not paths:
        raise RunError(f"no checkpoints in {folder.checkpoints} to audit in sample")
    paths = run_folder.ranked_paths(
        p if os.path.isabs(p) else os.path.join(folder.checkpoints, p)
        for p in paths)[-IN_SAMPLE_CHECKPOINTS:]
    model = training.build_model(setup, sync_batchnorm=False)
    parts = {"backbone": model.backbone}
    if model.meta_net is not None:
        parts["meta_net"] = model.meta_net
    from clid_tf.runs import callbacks  # pylint: disable=import-outside-toplevel
    checkpoint = callbacks.checkpoint_of(parts)
    idx = setup.train_indices
    part = data.Part(setup.dataset.train.inputs, idx, setup.noisy_labels[idx])
    probs, weights = [], []
    score = label_issues.scoring_function(model.backbone, model.meta_net)  # traced once
    for path in paths:
        try:
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, tf.errors.OpError) as error:
            raise RunError(f"checkpoint {path} does not match the run's networks "
                                    f"(flags.cfg changed?): {str(error).splitlines()[0]}"
                                    ) from error
        scores = label_issues.score_part(model, part, batch_size=FLAGS.eval_batch_size,
                                         score=score)
        probs.append(scores.probs)
        weights.append(scores.weights)
    return label_issues.Scores(np.mean(probs, axis=0),
                               None if model.meta_net is None else np.mean(weights, axis=0))


def write_scalars(logdir: str, found: dict) -> None:
    """TensorBoard scalars audit/<name> for the defined `label_issues.SCALARS`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name in label_issues.SCALARS:
            if found.get(name) is not None:
                tf.summary.scalar(f"audit/{name}", found[name], step=0)
    writer.close()


def summary(found: dict) -> str:
    """One paragraph for the terminal."""
    how = (f"out of sample ({found['folds']}-fold cross-fitting)" if found["folds"]
           else "in sample (the run's last checkpoints)")
    text = (f"Audited {found['num_train']} training labels {how}"
            f"{' with the meta-net weights' if found['has_meta_net'] else ''}. Estimated "
            f"noise rate {found['estimated_noise_rate']:.4f} (predicted label != given "
            f"label); the {found['num_flagged']} most suspicious samples are flagged.")
    if found["true_noise_rate"] is not None:
        text += (f" Against the true labels (noise rate {found['true_noise_rate']:.4f}): "
                 f"precision {_fmt(found['precision'])}, recall {_fmt(found['recall'])}, "
                 f"ROC AUC {_fmt(found['roc_auc'])}.")
    return text + f" Ranked samples: {found['csv']}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
