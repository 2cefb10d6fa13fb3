"""Hyper-parameters chosen without test labels: a grid scored on held-out noisy data.

Every grid point runs tools/bench_accuracy.py (one subprocess per point, its own
OUT/<point>/ folder) with --val_split: a seeded part of the NOISY training data is held
out of training, and its accuracy against its noisy labels is the score. Noisy labels
are all a user of a label-free method has; under noise that does not depend on the input,
accuracy against them is an increasing function of clean accuracy in expectation. Test
labels are never read for the choice (the table shows test accuracy beside it only to
report, in its own columns).

The chosen point maximises the mean over seeds of the held-out accuracy of the final
epoch (the score `--criterion` names); ties go to the earlier grid point.

  python tools/choose_hparams.py --out=/tmp/hp --base_flagfile=flags/digits_common.cfg \\
      --noises=sym:0.4 --grid=meta_lr=1e-3:1e-2,warmup_epochs=2:5 --seeds=0,1
"""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from toolbox import ROOT

FLAGS = flags.FLAGS
CRITERIA = {"val_final": "held-out accuracy, last epoch",
            "val_selected": "held-out accuracy, CLID-selected epoch"}


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Output folder (required).")
    flags.DEFINE_string("base_flagfile", "flags/digits_common.cfg", "Base setting of every run.")
    flags.DEFINE_list("grid", ["meta_lr=1e-3:1e-2"], "flag=v1:v2:... items; every "
                      "combination is a grid point.")
    flags.DEFINE_list("noises", ["sym:0.4"], "Noise settings (bench_accuracy --noises).")
    flags.DEFINE_list("methods", ["clid"], "Methods (bench_accuracy --methods).")
    flags.DEFINE_list("meta_nets", ["wnet"], "Meta-nets (bench_accuracy --meta_nets).")
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
    flags.DEFINE_float("val_split", 0.2, "Held-out fraction of the noisy training data.")
    flags.DEFINE_enum("criterion", "val_final", list(CRITERIA), "The score to maximise.")
    flags.DEFINE_list("extra", [], "More flags for every run.")
    flags.mark_flag_as_required("out")


def grid_points() -> list[dict[str, str]]:
    axes = []
    for item in FLAGS.grid:
        name, _, values = item.partition("=")
        axes.append([(name, v) for v in values.split(":")])
    return [dict(point) for point in itertools.product(*axes)]


def point_name(point: dict[str, str]) -> str:
    return "-".join(f"{k}{v}" for k, v in point.items())


def run_point(point: dict[str, str]) -> list[dict]:
    out = os.path.join(FLAGS.out, point_name(point))
    extra = [f"--{k}={v}" for k, v in point.items()] + [f"--val_split={FLAGS.val_split}",
                                                        *FLAGS.extra]
    command = [sys.executable, os.path.join(ROOT, "tools", "bench_accuracy.py"),
               f"--out={out}", f"--base_flagfile={FLAGS.base_flagfile}",
               f"--methods={','.join(FLAGS.methods)}",
               f"--meta_nets={','.join(FLAGS.meta_nets)}",
               f"--noises={','.join(FLAGS.noises)}", f"--seeds={','.join(FLAGS.seeds)}",
               f"--extra={','.join(extra)}"]
    if os.path.isdir(out):
        command.append("--resume")
    subprocess.run(command, cwd=ROOT, check=True)
    with open(os.path.join(out, "results.csv")) as f:
        return [row for row in csv.DictReader(f) if row["status"] == "ok"]


def chosen(means: list[dict[str, float]], criterion: str) -> int:
    """Index of the grid point with the highest `criterion` (a held-out, label-noisy score;
    never a test column); ties and NaNs go to the earlier point."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r} is not a held-out score ({list(CRITERIA)})")
    scores = [m[criterion] if m[criterion] == m[criterion] else -np.inf for m in means]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _mean(rows: list[dict], column: str) -> float:
    values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
    return float(np.mean(values)) if values else float("nan")


def main(argv):
    del argv
    points = grid_points()
    table = []
    for point in points:
        rows = run_point(point)
        for setting in sorted({(r["noise"], r["rate"], r["method"], r["meta_net"])
                               for r in rows}):
            group = [r for r in rows if (r["noise"], r["rate"], r["method"], r["meta_net"])
                     == setting]
            table.append((setting, point, len(group),
                          {c: _mean(group, c) for c in ("val_final", "val_selected", "final",
                                                         "selected")}))
    lines = [f"Hyper-parameters by {CRITERIA[FLAGS.criterion]} on a held-out "
             f"{FLAGS.val_split:g} of the noisy training data (base `{FLAGS.base_flagfile}`, "
             f"seeds {','.join(FLAGS.seeds)}); test accuracy is reported, not used.", "",
             "| noise | method | meta-net | point | seeds | val last (noisy) | "
             "val at CLID-selected (noisy) | test last | test CLID-selected | chosen |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for setting in sorted({s for s, *_ in table}):
        candidates = [(p, n, m) for s, p, n, m in table if s == setting]
        best = chosen([m for _, _, m in candidates], FLAGS.criterion)
        for i, (point, n, m) in enumerate(candidates):
            lines.append(
                f"| {setting[0]}:{setting[1]} | {setting[2]} | {setting[3]} | "
                f"{' '.join(f'{k}={v}' for k, v in point.items())} | {n} | "
                f"{m['val_final']:.3f} | {m['val_selected']:.3f} | {m['final']:.3f} | "
                f"{m['selected']:.3f} | {'**chosen**' if i == best else ''} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(FLAGS.out, "choice.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
