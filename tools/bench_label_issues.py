"""Label-issue benchmark: how well each audit (`python -m clid_tf.audit`) finds the
flipped labels, against cleanlab given the same out-of-sample probabilities.

For every noise setting and seed, with the known flips of the synthetic noise:

  in-sample CLID-MU     a CLID-MU training run, audited with its own last checkpoints
                        (--audit_folds=0: the model has seen the labels it judges)
  out-of-sample CLID-MU the same settings, K-fold cross-fitted (--audit_folds=K): each
                        fold's CLID-MU model scores the samples it never saw
  out-of-sample CE      the cleanlab recipe: K-fold cross-fitted plain cross-entropy
  cleanlab + ... probs  cleanlab's filter.find_label_issues (its default filter) and
                        label-quality ranking on the two out-of-sample audits' own
                        probabilities (their audit.npz)

Each row reports ROC AUC of the suspicion score for the flipped samples, and precision and
recall of the flagged set (as many as each method estimates), mean +- std over seeds,
beside the estimated and the true noise rate, and seconds: the audit's (the in-sample one
scores the last checkpoints; the out-of-sample ones train K models), cleanlab's filter and
ranking alone for its rows. Every run is a `python -m clid_tf.train` /
`python -m clid_tf.audit` subprocess under --out; --base_flagfile names the settings (digits
by default; Fashion-MNIST with --base_flagfile=flags/fmnist_clid.cfg
--extra=--dataset=npz:fashion_mnist.npz). Needs cleanlab (pip install ".[bench]").

  python tools/bench_label_issues.py --out=/tmp/bench_issues --seeds=0,1,2
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import time

import numpy as np
from absl import app, flags

import toolbox

FLAGS = flags.FLAGS
METRICS = ("roc_auc", "precision", "recall", "estimated_noise_rate", "true_noise_rate",
           "seconds")
AUDITS = ("in-sample CLID-MU", "out-of-sample CLID-MU", "out-of-sample CE")
CLEANLAB = ("cleanlab + out-of-sample CLID-MU probs", "cleanlab + out-of-sample CE probs")


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Output folder (required).")
    flags.DEFINE_string("base_flagfile", "flags/digits_sym40.cfg", "The training settings "
                        "(a CLID-MU flagfile; the CE rows add --method=ce).")
    flags.DEFINE_list("noises", ["sym:0.4", "pair:0.4"], "Noise settings kind:rate.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_integer("folds", 5, "K of the cross-fitting.")
    flags.DEFINE_list("extra", [], "More training flags for every run (e.g. --epochs=10).")
    flags.mark_flag_as_required("out")


def _run(module: str, *args: str) -> None:
    toolbox.run_cli(module, args)


def _audit_of(workdir: str) -> dict:
    return json.load(open(os.path.join(workdir, "results.json")))["audit"]


def flips_of(csv_path: str, samples: np.ndarray) -> np.ndarray:
    """bool [N]: whether each of `samples` (audit.npz's order) has a flipped label, read
    from the audit.csv rows (rank order) by their sample column."""
    with open(csv_path, newline="") as f:
        flips = {int(row["sample"]): row["is_flipped"] == "1" for row in csv.DictReader(f)}
    return np.array([flips[int(s)] for s in samples], dtype=bool)


def cleanlab_row(workdir: str) -> dict:
    """cleanlab's default filter and label-quality ranking on the probabilities of the
    audit in `workdir` (its audit.npz), scored against the flips its audit.csv records."""
    # pylint: disable-next=import-outside-toplevel
    from cleanlab import filter as cl_filter, rank as cl_rank
    with np.load(os.path.join(workdir, "audit.npz")) as arrays:
        probs, labels, samples = arrays["probs"], arrays["labels"], arrays["samples"]
    flipped = flips_of(os.path.join(workdir, "audit.csv"), samples)
    probs = probs.astype(np.float64) / probs.sum(axis=1, keepdims=True)
    started = time.perf_counter()
    flagged = cl_filter.find_label_issues(labels, probs)
    quality = cl_rank.get_label_quality_scores(labels, probs)
    seconds = time.perf_counter() - started
    return {**toolbox.detection_scores(1.0 - quality, flagged, flipped),
            "true_noise_rate": float(flipped.mean()), "seconds": seconds}


def one_seed(noise: str, rate: str, seed: int) -> dict[str, dict]:
    """The three audits of one noise setting and seed: audit name -> metrics."""
    base = os.path.join(FLAGS.out, f"{noise}-{rate}", f"seed{seed}")
    common = [f"--flagfile={FLAGS.base_flagfile}", f"--noise={noise}", f"--noise_rate={rate}",
              f"--seed={seed}", "--export=none", "--verbose=0", *FLAGS.extra]
    found = {}
    clid = os.path.join(base, "clid")
    if not os.path.isfile(os.path.join(clid, "results.json")):
        shutil.rmtree(clid, ignore_errors=True)
        _run("clid_tf.train", *common, f"--workdir={clid}", "--audit", "--audit_folds=0")
    found[AUDITS[0]] = _audit_of(clid)
    crossed = os.path.join(base, "clid_oos")
    if not os.path.isfile(os.path.join(crossed, "results.json")) or \
            "audit" not in json.load(open(os.path.join(crossed, "results.json"))) or \
            _audit_of(crossed)["folds"] != FLAGS.folds:
        shutil.rmtree(crossed, ignore_errors=True)
        shutil.copytree(clid, crossed)
        _run("clid_tf.audit", f"--workdir={crossed}", f"--audit_folds={FLAGS.folds}")
    found[AUDITS[1]] = _audit_of(crossed)
    ce = os.path.join(base, "ce")
    if not os.path.isfile(os.path.join(ce, "results.json")):
        shutil.rmtree(ce, ignore_errors=True)
        _run("clid_tf.train", *common, f"--workdir={ce}", "--method=ce", "--audit",
             f"--audit_folds={FLAGS.folds}")  # after the flagfile, which sets --method
    found[AUDITS[2]] = _audit_of(ce)
    for audit, workdir in zip(AUDITS, (clid, crossed, ce)):  # the runs are what they claim
        method = json.load(open(os.path.join(workdir, "results.json")))["flags"]["method"]
        assert method == ("ce" if "CE" in audit else "clid"), (workdir, method)
    for name, workdir in zip(CLEANLAB, (crossed, ce)):
        found[name] = cleanlab_row(workdir)
    return found


def table(results: dict, *, folds: int, base_flagfile: str, extra: list[str],
          seeds: list[str]) -> str:
    """The markdown table of {noise setting: [per-seed `one_seed` results]}."""
    lines = [f"{folds}-fold cross-fitting, {base_flagfile}"
             f"{' + ' + ' '.join(extra) if extra else ''}"
             f"; mean +- std over seeds {','.join(seeds)}", "",
             "| noise | audit | ROC AUC | precision | recall | estimated noise | "
             "true noise | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for setting, audits in results.items():
        for audit in (*AUDITS, *CLEANLAB):
            cells = []
            for metric in METRICS:
                cells.append(toolbox.mean_std([run[audit][metric] for run in audits],
                                              1 if metric == "seconds" else 3))
            lines.append(f"| {setting} | {audit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if importlib.util.find_spec("cleanlab") is None:
        toolbox.fail('cleanlab is not installed: pip install -e ".[bench]"')
    results = {}
    for setting in FLAGS.noises:
        noise, rate = setting.split(":")
        results[setting] = []
        for seed in (int(s) for s in FLAGS.seeds):
            results[setting].append(one_seed(noise, rate, seed))
            print(f"{setting} seed {seed}: " + ", ".join(
                f"{a} AUC {r['roc_auc']:.3f}" for a, r in results[setting][-1].items()),
                flush=True)
    text = table(results, folds=FLAGS.folds, base_flagfile=FLAGS.base_flagfile,
                 extra=FLAGS.extra, seeds=FLAGS.seeds)
    print(text)
    with open(os.path.join(FLAGS.out, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
