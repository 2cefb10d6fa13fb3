"""`python -m clid_tf.train`: one training run from the flags, start to finish.

`run` is the composition root: it checks the flags (`checks`) and the run folder, has the
trainer of --trainer prepare the data (numpy only, so bad input is one line before
TensorFlow starts) and train, writes results.json and, with --audit, audits the labels.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import shlex
import sys
import time

from absl import logging

from clid_tf import errors
from clid_tf.cli import auditing
from clid_tf.cli import checks
from clid_tf.cli import failures
from clid_tf.cli.flags import FLAGS, PAPER_SETTINGS
from clid_tf.cli.parsing import fail
from clid_tf.data import sources
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import parts
from clid_tf.trainers import runner


def main(argv: list[str]) -> None:
    """Entry point for `absl.app.run`: a bad input becomes one line and exit code 2."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every save at INFO: hide that
        logging.set_verbosity(logging.WARNING)
    state = {}
    try:
        run(state)
    except (errors.RunError, errors.DataError, run_folder.FolderError) as error:
        fail(str(error))
    except errors.NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except Exception as error:  # pylint: disable=broad-except
        message = failures.one_line(error, state.get("folder"), state.get("setup"))
        if message is None:
            raise
        fail(message)


# ---------------------------------------------------------------- the training run
def run(state: dict | None = None) -> dict:
    """Builds everything from FLAGS, trains, evaluates, exports; returns the results dict.

    `state` receives the run's folder and data as soon as they exist (what `main` needs to
    describe a failure). The folder is locked before anything is read or written; a
    --resume of a started run (its flags.cfg exists) checks the flags and the inputs
    whether or not an epoch was saved, and continues the newest intact checkpoint.
    """
    state = {} if state is None else state
    flags = checks.resolved(FLAGS)
    checks.check(flags)
    if FLAGS.resume and not FLAGS.workdir:
        raise errors.RunError("--resume needs --workdir=RUN, the folder of the run to continue")
    path = FLAGS.workdir or _default_workdir(flags)
    if flags.strategy == "multi_worker":  # one writer per folder: the chief writes RUN
        if not FLAGS.workdir:
            raise errors.RunError("--strategy=multi_worker needs --workdir=RUN, the same on "
                                  "every worker: the chief writes RUN, worker i RUN.worker<i>")
        path = run_folder.for_this_worker(path, os.environ.get("TF_CONFIG"))
    folder = run_folder.RunFolder(path)
    resuming = FLAGS.resume and folder.is_started()
    if resuming:
        folder.check_is_run()  # before anything is written or removed
        folder.lock()
        folder.check_resumable(flag_lines(flags), at_default=_at_default(flags))
        folder.remove_temporary_files()  # what a kill mid-write left, by its own names
    else:
        folder.create(allow_partial=FLAGS.resume)
    state["folder"] = folder
    trainer = flags.trainer_spec.module()
    with folder.removed_on_failure():
        with _tfds_warnings_hidden():  # numpy only: bad data is one line before TensorFlow starts
            setup = runner.prepare_setup(trainer, flags)
        state["setup"] = setup
        split = {**runner.split_arrays(trainer, flags, setup),
                 **run_folder.input_fingerprints(setup.dataset)}
        if resuming and folder.has_split():
            for note in folder.check_split(split):
                print(note)
        else:
            folder.write_flags(training_flags_text(flags))
            folder.save_split(split)
        print(plan_line(flags, setup, folder))
        started = time.time()
        results = runner.train(flags, setup, folder, trainer.build(flags, setup),
                               resuming=resuming)
    results["train_seconds"] = round(time.time() - started, 1)
    results["flags"] = dict(sorted(flags.read().items()))
    folder.write_results(results)
    print(result_line(results, folder))
    if FLAGS.audit:
        results["audit"] = auditing.audit(flags, folder, setup, folds=FLAGS.audit_folds)
    print(look_line(folder, audited=FLAGS.audit, auditable=auditable(flags)))
    return results


def training_flags_text(flags) -> str:
    """The run's flags.cfg: every flag the trainer reads, as --name=value with the value it
    reads (its defaults filled in), one per line; absl's own flags, such as --profile_file,
    are never written. Given back with --flagfile, or read by the audit, it runs the
    same trainer with the same values."""
    return "".join(f"{line}\n" for line in flag_lines(flags).values())


def flag_lines(flags) -> dict[str, str]:
    """Flag name -> its flags.cfg line ('--lr=0.05', '--noaugment_flip'), for every flag the
    trainer reads that has a value, in name order."""
    lines = {}
    for name, value in sorted(flags.read().items()):
        flag = copy.deepcopy(FLAGS[name])  # absl's own serialization of the read value
        flag.value = value
        if flag.serialize():
            lines[name] = flag.serialize()
    return lines


def _at_default(flags) -> set[str]:
    """The flags the trainer reads that are at their flag default, which a saved flags.cfg
    from an older clid-tf may not name (`RunFolder.check_resumable`)."""
    return {name for name in flags.read() if flags.at_flag_default(name)}


def auditable(flags) -> bool:
    """Whether `python -m clid_tf.audit` can audit this run's labels."""
    return bool(flags.trainer_spec.audits) and not flags.num_labels


def plan_line(flags, setup, folder: run_folder.RunFolder) -> str:
    """One line before training: the data and its size, the noise, what trains it, for how
    long, and where the results go (and a note when a benchmark runs on generic defaults)."""
    noise = parts.default_noise(flags, setup.dataset)
    ds = setup.dataset
    sizes = [f"{len(setup.train_indices)} train"]
    if hasattr(setup, "unlabeled_indices"):  # --num_labels
        trained = "" if flags.trainer_spec.trains_on_unlabeled else " (not trained on)"
        sizes = [f"{len(setup.train_indices)} labeled",
                 f"{len(setup.unlabeled_indices)} unlabeled{trained}"]
    if setup.val_indices is not None:
        sizes.append(f"{len(setup.val_indices)} held out")
    for name, split in (("val", ds.val), ("test", ds.test)):
        if split is not None:
            sizes.append(f"{len(split.labels)} {name}")
    noise_text = ("labels as given" if noise == "none" else f"human labels {noise}"
                  if sources.is_human_label(noise) else f"{noise} noise {flags.noise_rate:g}")
    trained_by = f"trainer {flags.trainer}"
    if "method" in flags.trainer_spec.reads:  # a trainer with a meta objective and meta-net
        meta_net = "none" if flags.method == "ce" else flags.meta_net or "none"
        trained_by += f", method {flags.method}, meta-net {meta_net}"
    epochs = flags.trainer_spec.describe_length(flags)
    line = (f"plan: {flags.dataset} ({', '.join(sizes)}, {ds.num_classes} classes), "
            f"{noise_text}; {trained_by}, backbone {flags.backbone}; {epochs}; "
            f"results in {folder.path}")
    note = paper_setting_note()
    return line if note is None else f"{line}\n{note}"


def paper_setting_note() -> str | None:
    """For a paper benchmark run without a flagfile, the line that says where the paper's
    settings are (the built-in defaults are the digits demo's sizes); else None."""
    if FLAGS.dataset not in PAPER_SETTINGS or _flagfile_given():
        return None
    return ("note: these are the generic defaults (the digits demo's sizes); the paper's "
            f"settings for {FLAGS.dataset} are in {PAPER_SETTINGS[FLAGS.dataset]} "
            "(--flagfile=...)")


def look_line(folder: run_folder.RunFolder, *, audited: bool, auditable: bool = True) -> str:
    """One line after the run: the commands that show its results (paths quoted for the
    shell)."""
    quote = shlex.quote
    line = (f"look at it: tensorboard --logdir {quote(folder.tensorboard)} ; "
            f"cat {quote(folder.results_path)}")
    if audited:
        line = f"{line} ; head {quote(folder.audit_csv)}"
        sheet = folder.audit_pictures["sheet"]
        if os.path.exists(sheet):
            viewer = "open" if sys.platform == "darwin" else "xdg-open"
            line = f"{line} ; {viewer} {quote(sheet)}"
        return line
    extensions = f" --extensions={quote(','.join(FLAGS.extensions))}" if FLAGS.extensions else ""
    return line + (f" ; python -m clid_tf.audit --workdir={quote(folder.path)}{extensions}"
                   if auditable else "")


def _flagfile_given() -> bool:
    """Whether the run's flags came (partly) from a --flagfile."""
    if "flagfile" in FLAGS and FLAGS["flagfile"].present:
        return True
    return any(arg.startswith("--flagfile") for arg in sys.argv)


def result_line(results: dict, folder: run_folder.RunFolder) -> str:
    if results.get("final_test_accuracy") is None:
        return (f"done: lowest meta-set CLID at epoch {results['selected_epoch']}; no test "
                f"split, so no test accuracy; results in {folder.path}")
    return (f"test accuracy: final {results['final_test_accuracy']:.4f}, best (oracle) "
            f"{results['best_test_accuracy']:.4f}, lowest-CLID epoch "
            f"{results['selected_accuracy']:.4f}, top-5 CLID ensemble "
            f"{results['ensemble5_accuracy']:.4f}; results in {folder.path}")


@contextlib.contextmanager
def _tfds_warnings_hidden():
    """TFDS logs an absl WARNING when it probes a data folder that is not prepared; the
    error line that follows says what to do (--verbosity shows them)."""
    level = logging.get_verbosity()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _default_workdir(flags) -> str:
    """runs/<dataset>-<method>-<time> (<trainer> for a trainer without a --method)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    what = flags.method if "method" in flags.trainer_spec.reads else flags.trainer
    return os.path.join("runs", f"{FLAGS.dataset.replace(':', '_').replace('/', '_')}"
                        f"-{what}-{stamp}")
