"""`python -m clid_tf.train`: one training run from the flags, start to finish.

`run` is the composition root: it checks the run folder, prepares the data (numpy only,
so bad input is one line before TensorFlow starts), trains with the parts of
`cli.training`, writes results.json and, with --audit, audits the labels.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from absl import logging

from clid_tf import errors
from clid_tf import run_folder
from clid_tf.cli import auditing
from clid_tf.cli import training
from clid_tf.cli.flagdefs import FLAGS, HUMAN_NOISE, fail, training_flag_names

# The benchmark sets whose paper settings live in flags/ (printed when run without one).
PAPER_SETTINGS = {"cifar10": "flags/cifar10_*.cfg", "cifar100": "flags/cifar100_*.cfg",
                  "cifar10_n": "flags/cifar10_n_*.cfg"}


def main(argv: list[str]) -> None:
    """Entry point for `absl.app.run`: a bad input becomes one line and exit code 2."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every save at INFO: hide that
        logging.set_verbosity(logging.WARNING)
    try:
        run()
    except (errors.RunError, errors.DataError, run_folder.FolderError) as error:
        fail(str(error))
    except errors.NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)


# ---------------------------------------------------------------- the training run
def run() -> dict:
    """Builds everything from FLAGS, trains, evaluates, exports; returns the results dict."""
    folder = run_folder.RunFolder(FLAGS.workdir or _default_workdir())
    resuming = FLAGS.resume and folder.has_checkpoint()
    if resuming:
        folder.check_resumable(FLAGS.flags_into_string())
    else:
        folder.create(allow_partial=FLAGS.resume)
    with folder.removed_on_failure():
        setup = training.prepare_setup()  # numpy only: bad data is reported before TensorFlow starts
        split = run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                        setup.meta_indices, setup.val_indices)
        if resuming:
            folder.check_split(split)
        else:
            folder.write_flags(FLAGS.flags_into_string())
            folder.save_split(split)
        print(plan_line(setup, folder))
        started = time.time()
        results = training.train(setup, folder, resuming=resuming)
    results["train_seconds"] = round(time.time() - started, 1)
    results["flags"] = {name: FLAGS[name].value for name in sorted(training_flag_names())}
    folder.write_results(results)
    print(result_line(results, folder))
    if FLAGS.audit:
        results["audit"] = auditing.audit(folder, setup, folds=FLAGS.audit_folds)
    print(f"look at it: tensorboard --logdir {folder.tensorboard} ; {folder.results_path}"
          + ("" if FLAGS.audit else f" ; python -m clid_tf.audit --workdir={folder.path}"))
    return results


def plan_line(setup, folder: run_folder.RunFolder) -> str:
    """One line before training: what will run and where the results go."""
    noise = training.default_noise()
    ds = setup.dataset
    noise_text = ("labels as given" if noise == "none" else f"human labels {noise}"
                  if noise in HUMAN_NOISE else f"{noise} noise {FLAGS.noise_rate:g}")
    meta = "" if FLAGS.method == "ce" else f" + {FLAGS.meta_net}"
    line = (f"training {FLAGS.backbone}{meta}, method {FLAGS.method}, on {FLAGS.dataset} "
            f"({len(setup.train_indices)} train"
            + ("" if setup.val_indices is None else f", {len(setup.val_indices)} held out")
            + ("" if ds.val is None else f", {len(ds.val.labels)} val")
            + ("" if ds.test is None else f", {len(ds.test.labels)} test")
            + f", {ds.num_classes} classes; {noise_text}) for {FLAGS.epochs} epochs into "
            f"{folder.path}")
    if FLAGS.dataset in PAPER_SETTINGS and not _flagfile_given():
        line += (f"\nnote: these are the generic defaults (tuned on digits); the paper's "
                 f"settings for {FLAGS.dataset} are in {PAPER_SETTINGS[FLAGS.dataset]} "
                 "(--flagfile=...)")
    return line


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


def _default_workdir() -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{FLAGS.dataset.replace(':', '_').replace('/', '_')}"
                        f"-{FLAGS.method}-{stamp}")
