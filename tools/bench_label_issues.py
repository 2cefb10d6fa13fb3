"""Label-issue benchmark: how well each audit finds the flipped labels of digits.

For every noise setting and seed, with the known flips of the synthetic noise:

  in-sample CLID-MU     a CLID-MU training run, audited with its own last checkpoints
                        (--audit_folds=0: the model has seen the labels it judges)
  out-of-sample CLID-MU the same settings, K-fold cross-fitted (--audit_folds=K): each
                        fold's CLID-MU model scores the samples it never saw
  out-of-sample CE      the cleanlab recipe: K-fold cross-fitted plain cross-entropy

Each row reports ROC AUC of the suspicion score for the flipped samples, and precision and
recall of the flagged set (the most suspicious, as many as the estimated noise rate says),
mean +- std over seeds, beside the estimated and the true noise rate. Every run is a
`python -m clid_tf.train` / `python -m clid_tf.audit` subprocess under --out.

  python tools/bench_label_issues.py --out=/tmp/bench_issues --seeds=0,1,2
"""

from __future__ import annotations

import json
import os
import shutil

from absl import app, flags

import toolbox

FLAGS = flags.FLAGS
METRICS = ("roc_auc", "precision", "recall", "estimated_noise_rate", "true_noise_rate")
AUDITS = ("in-sample CLID-MU", "out-of-sample CLID-MU", "out-of-sample CE")


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Output folder (required).")
    flags.DEFINE_list("noises", ["sym:0.4", "pair:0.4"], "Noise settings kind:rate.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_integer("folds", 5, "K of the cross-fitting.")
    flags.DEFINE_list("extra", [], "More training flags for every run (e.g. --epochs=10).")
    flags.mark_flag_as_required("out")


def _run(module: str, *args: str) -> None:
    toolbox.run_cli(module, args)


def _audit_of(workdir: str) -> dict:
    return json.load(open(os.path.join(workdir, "results.json")))["audit"]


def one_seed(noise: str, rate: str, seed: int) -> dict[str, dict]:
    """The three audits of one noise setting and seed: audit name -> metrics."""
    base = os.path.join(FLAGS.out, f"{noise}-{rate}", f"seed{seed}")
    common = ["--flagfile=flags/digits_sym40.cfg", f"--noise={noise}", f"--noise_rate={rate}",
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
    return found


def table(results: dict) -> str:
    lines = [f"digits, {FLAGS.folds}-fold cross-fitting, digits_sym40.cfg settings "
             f"(30 epochs, 5 warm-up){' + ' + ' '.join(FLAGS.extra) if FLAGS.extra else ''}"
             f"; mean +- std over seeds {','.join(FLAGS.seeds)}", "",
             "| noise | audit | ROC AUC | precision | recall | estimated noise | "
             "true noise |", "|---|---|---:|---:|---:|---:|---:|"]
    for setting, audits in results.items():
        for audit in AUDITS:
            cells = []
            for metric in METRICS:
                cells.append(toolbox.mean_std([run[audit][metric] for run in audits]))
            lines.append(f"| {setting} | {audit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    results = {}
    for setting in FLAGS.noises:
        noise, rate = setting.split(":")
        results[setting] = []
        for seed in (int(s) for s in FLAGS.seeds):
            results[setting].append(one_seed(noise, rate, seed))
            print(f"{setting} seed {seed}: " + ", ".join(
                f"{a} AUC {r['roc_auc']:.3f}" for a, r in results[setting][-1].items()),
                flush=True)
    text = table(results)
    print(text)
    with open(os.path.join(FLAGS.out, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
