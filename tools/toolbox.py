"""What the tools share: the checkout's root, the command line run as a subprocess, the
one-line failure of a tool, and how a label-issue finder is scored.

Every tool is run as a script (`python tools/NAME.py`), so this module is found beside
it; `clid_tf` itself is installed (`pip install -r requirements.txt` installs the
checkout in editable mode), so no tool changes sys.path.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: TensorFlow's C++ logs off, no GPU
    probing, and `extra`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **extra}


def cli_command(module: str, args: Sequence[str]) -> list[str]:
    """[python, -m, clid_tf.train|clid_tf.audit, *args]."""
    return [sys.executable, "-m", module, *args]


def run_cli(module: str, args: Sequence[str], *, cwd: str = ROOT, env=None,
            timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m module args` (clid_tf.train, clid_tf.audit) in `cwd`, output
    captured; with `check`, RuntimeError naming the command and its last error line when it
    fails."""
    proc = subprocess.run(cli_command(module, args), cwd=cwd, env=env or quiet_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed (exit {proc.returncode}): "
                           f"{last_line(proc.stderr) or last_line(proc.stdout)}")
    return proc


def last_line(text: str) -> str:
    """The last non-blank line of a process's output."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.912 +- 0.011' (mean and sample std) of several values, '0.912' of one."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def fail(message: str) -> None:
    """A tool's one error line, exit code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def chosen_cases(asked: Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """The cases a probe tool runs: those asked for (all when none), in the order given;
    an unknown one is the tool's one error line."""
    chosen = list(asked or known)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        fail(f"unknown case {unknown[0]}; choose from {', '.join(known)}")
    return chosen


def table_cell(message: str, scratch: str) -> str:
    """A printed line as a markdown table cell: the scratch folder as SCRATCH, '|' escaped."""
    return message.replace(scratch, "SCRATCH").replace("|", "\\|")


def detection_scores(suspicion, flagged, flipped) -> dict[str, float]:
    """How well a label-issue finder finds the flipped labels: ROC AUC of its suspicion
    [N] for `flipped` (bool [N]), precision and recall of its `flagged` set (bool [N]), and
    the flagged share (its estimated noise rate)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from sklearn import metrics  # pylint: disable=import-outside-toplevel
    flagged, flipped = np.asarray(flagged, bool), np.asarray(flipped, bool)
    hits = int(np.sum(flipped & flagged))
    return {"roc_auc": float(metrics.roc_auc_score(flipped, suspicion)),
            "precision": hits / max(1, int(flagged.sum())),
            "recall": hits / max(1, int(flipped.sum())),
            "estimated_noise_rate": float(flagged.mean())}
