"""The audit command: which training labels of a run does a CLID-MU model doubt?

`python -m clid_tf.audit --workdir=RUN` reads the training flags of RUN/flags.cfg as data
(flags given on the command line override them; nothing of absl's own is read from it),
rebuilds the run's data (the same noisy labels and training samples, checked against
RUN/split.npz) and ranks the training labels by suspicion
(`clid_tf.evaluation.label_issues`): with --audit_folds=K (5 by default) out of sample, K
models trained with the run's own settings, each scoring the fold it did not see; with
--audit_folds=0 in sample, with the run's last checkpoints (up to 3, averaged). It writes
RUN/audit.csv (one row per training sample, most suspicious first, named by file path for
file data and by index for arrays, labels by class name), RUN/audit.npz (the probabilities
[N, K] and given labels, for other tools such as cleanlab), RUN/audit.json (the summary) and
TensorBoard scalars under RUN/tensorboard/audit, and on a finished run adds the summary to
results.json["audit"]. It holds the folder's lock while it writes, so it never runs beside
the run's training; an unfinished run's results.json is left to the training (a --resume
afterwards finishes normally). `--audit` on a training run does the same after training.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from clid_tf.cli import checks, failures
from clid_tf.cli.flags import AUDIT_HELP, FLAGS, audit_groups
from clid_tf.cli.parsing import fail, parse_flags, run_flag_arguments
from clid_tf.data.inputs import read_numpy
from clid_tf.errors import RunError
from clid_tf.evaluation import label_issues
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import runner


def flags_parser(argv: list[str]) -> list[str]:
    """Parses the command line, then again on top of the training flags RUN/flags.cfg
    sets, read as data (`parsing.run_flag_arguments`: never as a flagfile, nothing of
    absl's own); --help, or one error line (a bad line of flags.cfg named by its number)."""
    parse_flags(argv, groups=audit_groups(), help_overrides=AUDIT_HELP)
    if not FLAGS.workdir:
        fail("--workdir=RUN is required: the folder of a training run")
    folder = run_folder.RunFolder(FLAGS.workdir)
    try:
        folder.check_is_run("audit")
        saved = run_flag_arguments(folder.read_flags(), folder.flags_path)
    except (run_folder.FolderError, ValueError) as error:
        fail(str(error))
    FLAGS.unparse_flags()
    return parse_flags(argv, saved=saved)


def main(argv: list[str]) -> None:
    """Entry point of `python -m clid_tf.audit` (after `flags_parser`)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    folder = run_folder.RunFolder(FLAGS.workdir)
    setup = None
    try:
        folder.lock()
        flags = checks.resolved(FLAGS)
        checks.check(flags)
        trainer = flags.trainer_spec.module()
        setup = runner.prepare_setup(trainer, flags)
        folder.check_split({**runner.split_arrays(trainer, flags, setup),
                            **run_folder.input_fingerprints(setup.dataset)}, action="audit")
        audit(flags, folder, setup, folds=FLAGS.audit_folds)
    except (RunError, run_folder.FolderError, ValueError) as error:  # DataError included
        folder.release()  # a folder that holds no run is left as it was found
        fail(str(error))
    except Exception as error:  # pylint: disable=broad-except
        # a full disk, an image found corrupt: one line; anything else is a bug
        message = failures.one_line(error, folder, setup, auditing=True)
        if message is None:
            raise
        fail(message)


def audit(flags, folder: run_folder.RunFolder, setup, *, folds: int) -> dict:
    """Audits the training labels of the run in `folder`; writes CSV, JSON and scalars.

    Returns:
      The metrics dict also stored in audit.json (and results.json["audit"] of a finished
      run): `label_issues.metrics` keys plus folds, has_meta_net, csv, run_finished,
      pictures, pictures_seconds and seconds (the whole audit, pictures included).
    """
    started = time.time()
    spec = flags.trainer_spec
    refusal = checks.audit_refusal(spec, folds)
    if refusal is not None:
        raise RunError(refusal)
    trainer = spec.module()
    idx = setup.train_indices
    given = setup.noisy_labels[idx]
    clean = setup.dataset.train.clean_labels
    clean = None if clean is None else clean[idx]
    scores = (runner.out_of_sample_scores(trainer, flags, setup, folds=folds) if folds
              else runner.in_sample_scores(trainer, flags, folder, setup))
    names = setup.dataset.train.inputs.names()
    names = idx if names is None else names[idx]
    flagged = label_issues.flag_issues(scores.probs, given, filter_by=flags.audit_filter)
    rows = label_issues.table(names, scores, given, class_names=setup.dataset.class_names,
                              clean=clean, flagged=flagged)
    label_issues.write_csv(folder.audit_csv, rows)
    label_issues.write_arrays(folder.audit_arrays, scores, given, idx)
    order = label_issues.rank_by_suspicion(label_issues.suspicion_scores(scores.probs, given))
    pictures = write_pictures(folder, setup, rows, idx[order], show=flags.audit_show)
    found = {**label_issues.metrics(scores.probs, given, clean, flagged=flagged),
             "filter_by": flags.audit_filter, "folds": folds,
             "has_meta_net": scores.weights is not None, "csv": folder.audit_csv,
             "run_finished": folder.is_complete(), **pictures}
    if not folds:
        found["epochs"] = [run_folder.checkpoint_epoch(p) for p in
                           folder.checkpoint_paths()[-label_issues.IN_SAMPLE_CHECKPOINTS:]]
    files = getattr(setup.dataset.train.inputs, "files", None)
    if files is not None:  # a list file may name files outside its data root
        found["files_outside_root"] = int(files.outside_root()[idx].sum())
    found["seconds"] = round(time.time() - started, 2)
    folder.write_audit(found)
    if found["run_finished"]:
        folder.merge_results("audit", found)
    write_scalars(os.path.join(folder.tensorboard, "audit"), found)
    print(summary(found))
    return found


def write_pictures(folder: run_folder.RunFolder, setup, rows: list[dict],
                   ranked: np.ndarray, *, show: int) -> dict:
    """audit.png (the `show` most suspicious samples; a table for feature vectors),
    audit_classes.png and audit_confusion.png, and the same under tensorboard/audit. Reads
    only the images it shows. Returns {'pictures': [paths], 'pictures_seconds': s}."""
    if not show or not rows:
        for stale in folder.audit_pictures.values():  # no earlier audit's pictures remain
            if os.path.exists(stale):
                os.remove(stale)
        return {"pictures": []}
    # deferred: keeps TensorFlow and matplotlib out of the command line's checks
    # pylint: disable=import-outside-toplevel
    import tensorflow as tf
    from clid_tf.evaluation import audit_sheet
    from clid_tf.runs import tb_views
    started = time.time()
    inputs = setup.dataset.train.inputs
    paths = folder.audit_pictures

    def images_of(picked):  # source indices of audit rows: rank r is ranked[r - 1]
        return read_numpy(inputs, [int(ranked[row["rank"] - 1]) for row in picked])

    shown = rows[:show]
    title = f"the {len(shown)} most suspicious of {len(rows)} training labels"
    figures = {}
    if len(inputs.element_shape) == 3:
        figures["sheet"] = audit_sheet.contact_sheet(images_of(shown), shown, title=title)
        figures["classes"] = audit_sheet.class_sheet(images_of, rows)
    else:
        figures["sheet"] = audit_sheet.table_sheet(shown, title=title)
    figures["confusion"] = audit_sheet.confusion_figure(rows, setup.dataset.class_names)
    written = []
    writer = tf.summary.create_file_writer(os.path.join(folder.tensorboard, "audit"))
    with writer.as_default():
        for name, figure in figures.items():
            if figure is None:  # nothing flagged: no class sheet (nor a stale one)
                if os.path.exists(paths[name]):
                    os.remove(paths[name])
                continue
            audit_sheet.save(figure, paths[name])
            written.append(paths[name])
            tf.summary.image(f"audit/{name}", tb_views.figure_to_image(figure)[None], step=0)
    writer.close()
    return {"pictures": written, "pictures_seconds": round(time.time() - started, 2)}


def write_scalars(logdir: str, found: dict) -> None:
    """TensorBoard scalars audit/<name> for the defined `label_issues.SCALARS`."""
    # deferred: keeps TensorFlow out of the command line's checks
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
            f"noise rate {found['estimated_noise_rate']:.4f} ({found['num_flagged']} "
            f"samples flagged by {found['filter_by'].replace('_', ' ')}).")
    if found["true_noise_rate"] is not None:
        text += (f" Against the true labels (noise rate {found['true_noise_rate']:.4f}): "
                 f"precision {_fmt(found['precision'])}, recall {_fmt(found['recall'])}, "
                 f"ROC AUC {_fmt(found['roc_auc'])}.")
    if found.get("files_outside_root"):
        text += (f" {found['files_outside_root']} of the audited files lie outside the data "
                 "root (the list file names them so; they were read as listed).")
    text += f" Ranked samples: {found['csv']}"
    if found.get("pictures"):
        text += f"; the most suspicious as pictures: {found['pictures'][0]}"
    if not found["run_finished"]:
        text += (" The run has not finished: this audit is in audit.json, and results.json "
                 "is left to the training (--resume continues it).")
    return text


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
