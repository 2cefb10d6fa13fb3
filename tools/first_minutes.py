"""The first minutes of a new user, replayed: help, a first run, and the usual mistakes.

Each case is one subprocess run in --repo (a fresh clone) exactly as a user would type it,
with the user's own files (arrays, flagfiles, an empty TFDS folder) in a scratch folder
outside the clone. Prints a markdown table: the case, the command, the exit code, the
seconds it took, what it left behind in the clone or its workdir, and the exact message
(the `error:` line; for help and the first run, what they showed).

  git clone /path/to/clid-tf /tmp/fresh && python tools/first_minutes.py --repo=/tmp/fresh

The offline CIFAR-10 case points --data_dir at an empty folder; on a machine with internet
it is skipped (TFDS would download CIFAR-10 there, as it should).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
from absl import app, flags

from toolbox import ROOT

from clid_tf import cli

FLAGS = flags.FLAGS
# TensorFlow's C++ start-up log (before absl::InitializeLog): not the program's message.
TF_NATIVE_LOG = re.compile(r"[IWEF]0000 00:00:|WARNING: All log messages before absl::")


class Case(NamedTuple):
    name: str
    args: tuple[str, ...]  # after `python`
    workdir: str | None = None  # a --workdir the case passes: must not be left behind
    cwd: str | None = None  # default: the clone
    summary: str = "error"  # how to show the output: error, help, run


class Outcome(NamedTuple):
    exit_code: int
    seconds: float
    left: list[str]
    message: str


def define_flags() -> None:
    flags.DEFINE_string("repo", ROOT, "The clone to run in (a fresh one, as a new user has).")
    flags.DEFINE_bool("first_run", True, "Include the first real run (1 epoch on digits, "
                      "about 10-20 s): its plan line and its last line.")


def cases(scratch: str) -> list[Case]:
    """The issue's list, then the mistakes like them; files are written into `scratch`."""
    def path(name: str) -> str:
        return os.path.join(scratch, name)

    def write(name: str, text: str) -> str:
        with open(path(name), "w") as f:
            f.write(text)
        return path(name)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    np.savez(path("one_based.npz"), x_train=images, y_train=np.arange(60) % 10 + 1,
             x_test=images[:20], y_test=np.arange(20) % 10 + 1)
    np.savez(path("vectors.npz"), x_train=rng.random((60, 5)), y_train=np.arange(60) % 3,
             x_test=rng.random((20, 5)), y_test=np.arange(20) % 3)
    mine = write("mine.cfg", "# my setting\n--flagfile=flags/digits_sym40.cfg\n"
                             "--noise_rate=0.6\n--metalr=0.01\n")
    outer = write("outer.cfg", f"--flagfile={mine}\n--epochs=10\n")
    bad_value = write("bad_value.cfg", "--epochs=ten\n")
    not_a_flag = write("not_a_flag.cfg", "--method=clid\nepochs 10\n")
    os.makedirs(path("empty_tfds"))
    os.makedirs(path("elsewhere"))
    train = ("-m", "clid_tf.train")
    work = path("run")
    w = f"--workdir={work}"
    listed = [
        Case("--help", (*train, "--help"), summary="help"),
        Case("--helpfull", (*train, "--helpfull"), summary="help"),
        Case("audit --help", ("-m", "clid_tf.audit", "--help"), summary="help"),
        Case("cifar10, data not prepared, offline", (*train, w, "--dataset=cifar10",
                                                     f"--data_dir={path('empty_tfds')}"), work),
        Case("misspelt flag in a flagfile", (*train, w, f"--flagfile={mine}"), work),
        Case("... in a nested flagfile", (*train, w, f"--flagfile={outer}"), work),
        Case("missing flagfile", (*train, w, "--flagfile=flags/digits_sym50.cfg"), work),
        Case("labels 1..10 in an npz", (*train, w, f"--dataset=npz:{path('one_based.npz')}"),
             work),
        Case("feature vectors, default conv backbone",
             (*train, w, f"--dataset=npz:{path('vectors.npz')}"), work),
        # like them
        Case("misspelt flag", (*train, w, "--metalr=0.01"), work),
        Case("bad value in a flagfile", (*train, w, f"--flagfile={bad_value}"), work),
        Case("a flagfile line that is no flag", (*train, w, f"--flagfile={not_a_flag}"), work),
        Case("flagfile named without flags/", (*train, w, "--flagfile=digits_sym40.cfg"), work),
        Case("repo flagfile, run from elsewhere",
             (*train, w, f"--flagfile={os.path.join(FLAGS.repo, 'flags', 'digits_sym40.cfg')}"),
             work, cwd=path("elsewhere")),
        Case("float for an integer", (*train, w, "--epochs=2.5"), work),
        Case("flag without its value", (*train, "--workdir", "--epochs=3"), None),
        Case("value on a --no flag", (*train, w, "--noresume=1"), work),
        Case("out-of-range value", (*train, w, "--noise_rate=40"), work),
        Case("unknown choice", (*train, w, "--method=CLID"), work),
        Case("flag of the benchmark tool", (*train, w, "--seeds=0,1,2"), work),
        Case("stray argument", (*train, w, "epochs=3"), work),
        Case("npz path without npz:", (*train, w, f"--dataset={path('vectors.npz')}"), work),
        Case("folder: given a file", (*train, w, f"--dataset=folder:{path('vectors.npz')}"),
             work),
        Case("relative npz path from elsewhere", (*train, w, "--dataset=npz:data/mine.npz"),
             work, cwd=path("elsewhere")),
        Case("TFDS name typo", (*train, w, "--dataset=tfds:mnsit",
                                f"--data_dir={path('empty_tfds')}"), work),
        Case("CIFAR-N without --noise", (*train, w, "--dataset=cifar10_n"), work),
        Case("human noise on digits", (*train, w, "--noise=worst"), work),
        Case("one audit fold", (*train, w, "--audit", "--audit_folds=1"), work),
        Case("multistep without milestones", (*train, w, "--lr_schedule=multistep"), work),
        Case("--resume without --workdir", (*train, "--resume"), None),
        Case("audit without --workdir", ("-m", "clid_tf.audit"), None),
        Case("audit of a folder that is no run", ("-m", "clid_tf.audit",
                                                  f"--workdir={path('elsewhere')}"), None),
        Case("running the file, not -m", ("clid_tf/train.py", w, "--epochs=0"), work),
    ]
    if FLAGS.first_run:
        listed.insert(3, Case("first run: 1 epoch, default workdir",
                              (*train, "--epochs=1", "--verbose=0"), summary="run"))
    return listed


def snapshot(folder: str) -> set[str]:
    """Paths under `folder` (no .git, no __pycache__: Python writes those on import)."""
    found = set()
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__")]
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(parent, name), folder))
    return found


def attempt(case: Case) -> Outcome:
    cwd = case.cwd or FLAGS.repo
    env = {**os.environ, "PYTHONPATH": FLAGS.repo}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user has it
    before = snapshot(cwd)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *case.args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    created = snapshot(cwd) - before
    left = sorted(p for p in created if os.path.dirname(p) not in created)  # outermost
    if case.summary == "run":  # the tool's own run: report its folder, then remove it
        for p in left:
            shutil.rmtree(os.path.join(cwd, p), ignore_errors=True)
        left = [f"{p} (the run's results; removed by this tool)" for p in left]
    if case.workdir and os.path.exists(case.workdir):
        left.append(case.workdir)
    return Outcome(proc.returncode, seconds, left, describe(case, proc))


def describe(case: Case, proc: subprocess.CompletedProcess) -> str:
    """The exact message: the stderr lines (TensorFlow's native start-up log left out), or
    what help and a run showed."""
    err = [line for line in proc.stderr.splitlines()
           if line.strip() and not TF_NATIVE_LOG.match(line)]
    if case.summary == "help":
        groups = re.findall(r"^(\S[^\n]*):$", proc.stdout, re.M)
        names = re.findall(r"^  -(?:\?,)?-(?:\[no\])?\w+", proc.stdout, re.M)
        return (f"{len(names)} flags under: {'; '.join(groups)}"
                + (f" / stderr: {' | '.join(err)}" if err else ""))
    if case.summary == "run":
        out = [line for line in proc.stdout.splitlines() if line.strip()]
        shown = [line for line in out if line.startswith(("plan:", "look at it:"))]
        return " / ".join(shown + [f"stderr: {line}" for line in err if "error" in line])
    return " | ".join(err) if err else "(no message)"


def table(rows: list[tuple[Case, Outcome]]) -> str:
    lines = ["| case | command | exit | s | left behind | message |",
             "|---|---|---:|---:|---|---|"]
    for case, outcome in rows:
        command = "python " + " ".join(case.args)
        lines.append(f"| {case.name} | `{command}` | {outcome.exit_code} | "
                     f"{outcome.seconds:.1f} | {', '.join(outcome.left) or 'nothing'} | "
                     f"{outcome.message.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS.repo = os.path.abspath(FLAGS.repo)
    if not os.path.isfile(os.path.join(FLAGS.repo, "clid_tf", "train.py")):
        cli.fail(f"--repo={FLAGS.repo} is not a clid-tf clone (no clid_tf/train.py)")
    from clid_tf.data.sources import cifar as tfds_cifar  # pylint: disable=import-outside-toplevel
    offline = not tfds_cifar.online()
    with tempfile.TemporaryDirectory(prefix="first_minutes_") as scratch:
        todo = [c for c in cases(scratch) if offline or "offline" not in c.name]
        rows = []
        for case in todo:
            rows.append((case, attempt(case)))
            print(f"{case.name}: exit {rows[-1][1].exit_code}, {rows[-1][1].seconds:.1f} s",
                  file=sys.stderr)
        text = table(rows).replace(scratch, "<scratch>")
    print(f"clone: {FLAGS.repo}; user files in <scratch> (a temporary folder); "
          f"{'offline' if offline else 'online: the offline CIFAR-10 case skipped'}\n")
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
