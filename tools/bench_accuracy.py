"""Accuracy benchmark: a matrix of training settings through the CLI, mean ± std over seeds.

Every (method, meta-net, noise, rate, seed) run is one `python -m clid_tf.train` subprocess
with its own workdir OUT/<cell>/seed<k>, e.g. OUT/sym-0.4-clid-wnet/seed0 (its output goes
to OUT/<cell>/seed<k>.log). Method `ce` has no meta-net, so it runs once per noise setting.
When all runs are done the tool writes OUT/results.csv (one row per run) and OUT/results.md
(one row per setting: mean ± sample std over seeds of the last, best (oracle),
lowest-meta-CLID and top-5 CLID ensemble test accuracies) and prints the table. A failed
run is recorded and the benchmark goes on; the exit code is then 1. An interrupted
benchmark continues with --resume.

  python tools/bench_accuracy.py --out=bench/digits --seeds=0,1,2 --parallel=2
  python tools/bench_accuracy.py --out=bench/quick --methods=ce,clid --noises=sym:0.4 \\
      --extra=--epochs=10,--warmup_epochs=2
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np
from absl import app, flags

import toolbox
from toolbox import ROOT

from clid_tf import cli
from clid_tf.data import noise as noise_lib
from clid_tf.data import sources

FLAGS = flags.FLAGS

META_NETS = ("wnet", "vri")
NO_META_NET = "-"  # the meta-net column of method 'ce'
# Flags the matrix sets itself; --extra may not set them.
RESERVED = ("method", "meta_net", "noise", "noise_rate", "seed", "workdir", "flagfile")
# CSV column -> results.json key, for the numbers read from a finished run.
RESULT_KEYS = {
    "final": "final_test_accuracy",
    "best": "best_test_accuracy",
    "selected": "selected_accuracy",
    "ensemble3": "ensemble3_accuracy",
    "ensemble5": "ensemble5_accuracy",
    "val_final": "final_val_accuracy",
    "val_best": "best_val_accuracy",
    "val_selected": "selected_val_accuracy",
    "realised_noise_rate": "realised_noise_rate",
    "train_seconds": "train_seconds",
}
CSV_COLUMNS = ("method", "meta_net", "noise", "rate", "seed", *RESULT_KEYS, "status",
               "error")
# Table column -> CSV column of the accuracies aggregated over seeds.
TABLE_ACCURACIES = {
    "last": "final",
    "best (oracle)": "best",
    "CLID-selected": "selected",
    "CLID top-5 ensemble": "ensemble5",
}
# Accuracies on the held-out part of the noisy training data (--val_split), against its
# noisy labels: label-free of clean labels, the columns hyper-parameters are chosen by.
TABLE_VAL = {
    "val last (noisy)": "val_final",
    "val best (noisy)": "val_best",
    "val at CLID-selected (noisy)": "val_selected",
}


class BenchError(Exception):
    """A problem with the benchmark's flags or output folder: one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One cell of the matrix: a method, its meta-net and a noise model; run per seed."""

    method: str
    meta_net: str
    noise: str
    rate: float

    @property
    def name(self) -> str:
        """Folder name of the cell, e.g. 'sym-0.4-clid-wnet' or 'pair-0.4-ce'."""
        parts = [self.noise, f"{self.rate:g}", self.method]
        if self.meta_net != NO_META_NET:
            parts.append(self.meta_net)
        return "-".join(parts)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a setting and a seed."""

    setting: Setting
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting.name}/seed{self.seed}"

    def workdir(self, out: str) -> str:
        return os.path.join(out, self.setting.name, f"seed{self.seed}")

    def log_path(self, out: str) -> str:
        return os.path.join(out, self.setting.name, f"seed{self.seed}.log")


def define_flags() -> None:
    """Defines the benchmark's flags (called by main, never at import time)."""
    flags.DEFINE_string("out", None, "Output folder (required). Must be new or empty unless "
                        "--resume.")
    flags.DEFINE_bool("resume", False, "Continue the benchmark in a non-empty --out: skip "
                      "the runs whose results.json exists, rerun the others.")
    flags.DEFINE_list("methods", ["ce", "ce_clean", "ce_noisy", "clid", "entropy"],
                      f"Methods ({', '.join(cli.METHODS)}); 'ce' has no meta-net and runs "
                      "once per noise setting.")
    flags.DEFINE_list("meta_nets", ["wnet"], f"Meta-nets ({', '.join(META_NETS)}).")
    flags.DEFINE_list("noises", ["sym:0.4", "sym:0.6", "pair:0.4", "instance:0.4"],
                      "Noise settings as kind:rate (kinds of --noise of clid_tf.train).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (integers).")
    flags.DEFINE_string("base_flagfile", "flags/digits_common.cfg", "Flagfile passed as "
                        "--flagfile= to every run (relative to the current folder or the "
                        "repository root).")
    flags.DEFINE_list("extra", [], "Extra --flag=value strings passed to every run, e.g. "
                      "--extra=--epochs=10,--warmup_epochs=2 (an item without a leading "
                      "'--' continues the previous one: --extra=--lr_milestones=10,20).")
    flags.DEFINE_integer("parallel", 1, "Concurrent training subprocesses.", lower_bound=1)
    flags.DEFINE_integer("timeout", 3600, "Seconds one run may take (0: no limit).",
                         lower_bound=0)
    flags.mark_flag_as_required("out")


# ---------------------------------------------------------------------------- the matrix

def parse_noises(items: Iterable[str]) -> list[tuple[str, float]]:
    """'kind:rate' items -> [(kind, rate)], checked; duplicates dropped, order kept."""
    kinds = (*noise_lib.KINDS, *sources.human_labels())
    parsed = []
    for item in items:
        kind, sep, rate_text = item.partition(":")
        if not sep:
            raise BenchError(f"--noises item {item!r} is not kind:rate (e.g. sym:0.4)")
        if kind not in kinds:
            raise BenchError(f"--noises: unknown noise kind {kind!r}; expected one of "
                             f"{', '.join(kinds)}")
        try:
            rate = float(rate_text)
        except ValueError:
            raise BenchError(f"--noises item {item!r}: rate {rate_text!r} is not a "
                             "number") from None
        if not 0.0 <= rate <= 1.0:
            raise BenchError(f"--noises item {item!r}: rate must be in [0, 1]")
        parsed.append((kind, rate))
    return _unique(parsed)


def parse_seeds(items: Sequence[str]) -> list[int]:
    """Seed strings -> ints; duplicates dropped, order kept."""
    try:
        return _unique(int(item) for item in items)
    except ValueError:
        raise BenchError(f"--seeds must be integers, got {','.join(items)}") from None


def check_choices(flag: str, values: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Values of a list flag, each one of `allowed`; duplicates dropped, order kept."""
    if not values:
        raise BenchError(f"--{flag} is empty")
    for value in values:
        if value not in allowed:
            raise BenchError(f"--{flag}: unknown value {value!r}; expected one of "
                             f"{', '.join(allowed)}")
    return _unique(values)


def parse_extra(items: Iterable[str]) -> list[str]:
    """Extra flags as passed on: items the list flag split at a comma are joined again."""
    joined: list[str] = []
    for item in items:
        if item.startswith("--"):
            joined.append(item)
        elif joined:
            joined[-1] += f",{item}"
        else:
            raise BenchError(f"--extra item {item!r} does not start with '--'")
    for item in joined:
        name = item[2:].split("=", 1)[0]
        if name in RESERVED:
            raise BenchError(f"--extra may not set --{name}: the benchmark sets it "
                             "(use --methods, --meta_nets, --noises, --seeds, --out or "
                             "--base_flagfile)")
    return joined


def build_settings(methods: Sequence[str], meta_nets: Sequence[str],
                   noises: Sequence[tuple[str, float]]) -> list[Setting]:
    """The cells: noise-major, then method, then meta-net; 'ce' once per noise setting."""
    settings = []
    for kind, rate in noises:
        for method in methods:
            for meta_net in [NO_META_NET] if method == "ce" else meta_nets:
                settings.append(Setting(method, meta_net, kind, rate))
    return settings


def build_runs(settings: Sequence[Setting], seeds: Sequence[int]) -> list[Run]:
    """Every setting with every seed, setting-major."""
    return [Run(setting, seed) for setting in settings for seed in seeds]


def command(run: Run, *, out: str, flagfile: str, extra: Sequence[str]) -> list[str]:
    """The training command line of `run` (extra flags after the benchmark's own)."""
    s = run.setting
    args = [sys.executable, "-m", "clid_tf.train", f"--flagfile={flagfile}",
            f"--method={s.method}", f"--noise={s.noise}", f"--noise_rate={s.rate:g}",
            f"--seed={run.seed}"]
    if s.meta_net != NO_META_NET:
        args.append(f"--meta_net={s.meta_net}")
    return [*args, "--verbose=0", "--export=none", *extra,
            f"--workdir={run.workdir(out)}"]


def resolve_flagfile(path: str) -> str:
    """Absolute path of the base flagfile: relative to the current folder or the repo."""
    for candidate in (os.path.abspath(path), os.path.join(ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise BenchError(f"--base_flagfile {path} does not exist")


# ---------------------------------------------------------------------- output folder

def check_out(out: str, *, resume: bool) -> None:
    """Creates `out`; refuses one that holds files unless resuming."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise BenchError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not resume:
        raise BenchError(f"--out {out} is not empty (it holds an earlier benchmark); "
                         "choose a new folder or pass --resume to continue it")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise BenchError(f"--out {out} cannot be created: {error.strerror}") from None


def plan(runs: Sequence[Run], out: str) -> tuple[dict[Run, dict], list[Run]]:
    """Splits runs into finished ones (their CSV rows, from results.json) and those to do."""
    done, todo = {}, []
    for run in runs:
        path = os.path.join(run.workdir(out), "results.json")
        if os.path.isfile(path):
            try:
                done[run] = result_row(run, read_results(path))
                continue
            except (OSError, ValueError):
                pass  # unreadable: run it again
        todo.append(run)
    return done, todo


def clear_workdir(run: Run, out: str) -> None:
    """Removes what an interrupted or failed earlier run left (the CLI wants it empty)."""
    workdir = run.workdir(out)
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)


# ---------------------------------------------------------------------------- results

def read_results(path: str) -> dict:
    """The numbers of RESULT_KEYS from a results.json (None where a key is missing)."""
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return {column: _number(results.get(key)) for column, key in RESULT_KEYS.items()}


def result_row(run: Run, values: dict | None, *, status: str = "ok",
               error: str = "") -> dict:
    """One CSV row: the run's setting, its numbers (None if it failed) and its status."""
    s = run.setting
    values = values or {}
    return {"method": s.method, "meta_net": s.meta_net, "noise": s.noise, "rate": s.rate,
            "seed": run.seed, **{column: values.get(column) for column in RESULT_KEYS},
            "status": status, "error": error}


def run_of(row: dict) -> Run:
    """The run a CSV row describes."""
    return Run(Setting(row["method"], row["meta_net"], row["noise"], row["rate"]),
               row["seed"])


def write_csv(rows: Sequence[dict], path: str) -> None:
    """Writes the per-run rows (None as an empty field)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})


def _number(value) -> float | None:
    return None if value is None else float(value)


# -------------------------------------------------------------------------- aggregate

@dataclasses.dataclass
class Group:
    """The seeds of one setting: (mean, std) per accuracy column over the runs that finished."""

    noise: str
    rate: float
    method: str
    meta_net: str
    num_ok: int
    num_runs: int
    stats: dict[str, tuple[float, float] | None]
    realised_noise_rate: float | None


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof=1; 0 for one value); None for no values."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), std


def aggregate(rows: Sequence[dict]) -> list[Group]:
    """One Group per (noise, rate, method, meta_net), in the order the rows first name it."""
    keyed: dict[tuple, list[dict]] = {}
    for row in rows:
        keyed.setdefault((row["noise"], row["rate"], row["method"], row["meta_net"]),
                         []).append(row)
    groups = []
    for (noise, rate, method, meta_net), members in keyed.items():
        ok = [row for row in members if row["status"] == "ok"]
        stats = {column: mean_std(_present(row[column] for row in ok))
                 for column in (*TABLE_ACCURACIES.values(), *TABLE_VAL.values())}
        realised = mean_std(_present(row["realised_noise_rate"] for row in ok))
        groups.append(Group(noise, rate, method, meta_net, len(ok), len(members), stats,
                            None if realised is None else realised[0]))
    return groups


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


# -------------------------------------------------------------------------- formatting

def format_mean_std(stat: tuple[float, float] | None, num: int) -> str:
    """'0.912 ± 0.011'; just '0.912' for a single seed; '-' without values."""
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.3f}" if num == 1 else f"{mean:.3f} ± {std:.3f}"


def header_line(*, flagfile: str, extra: Sequence[str], seeds: Sequence[int]) -> str:
    """The setting shared by every run, and the machine."""
    extra_text = " ".join(extra) if extra else "none"
    return (f"Base flagfile: `{flagfile}`; extra flags: `{extra_text}`; seeds: "
            f"{','.join(str(s) for s in seeds)}; machine: {os.cpu_count()} CPUs, "
            f"{platform.platform()}, Python {platform.python_version()}.")


def markdown_table(groups: Sequence[Group]) -> str:
    """One row per setting: accuracies as mean ± std over seeds, seeds, realised noise."""
    val = [name for name, c in TABLE_VAL.items() if any(g.stats[c] for g in groups)]
    columns = ["noise", "rate", "method", "meta-net", *TABLE_ACCURACIES, *val, "seeds",
               "realised noise"]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---", "---:", "---", "---", *["---:"] * (len(columns) - 4)])
             + "|"]
    for g in groups:
        seeds = str(g.num_ok) if g.num_ok == g.num_runs else f"{g.num_ok}/{g.num_runs}"
        realised = "-" if g.realised_noise_rate is None else f"{g.realised_noise_rate:.3f}"
        cells = [g.noise, f"{g.rate:g}", g.method, g.meta_net,
                 *[format_mean_std(g.stats[c], g.num_ok) for c in TABLE_ACCURACIES.values()],
                 *[format_mean_std(g.stats[TABLE_VAL[name]], g.num_ok) for name in val],
                 seeds, realised]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: Sequence[dict], *, header: str) -> str:
    """The markdown report: title, header line, legend, table, failed runs."""
    parts = ["# Accuracy benchmark", "", header, "",
             "Test accuracy, mean ± sample std over seeds: last = final epoch, best = "
             "oracle (best test epoch), CLID-selected = epoch with the lowest meta-set "
             "CLID, CLID top-5 ensemble = argmax of the summed test logits of the 5 "
             "lowest-CLID epochs. seeds = finished runs (ok/all where some failed); realised noise = mean "
             "fraction of flipped training labels.", "",
             markdown_table(aggregate(rows))]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        parts += ["", "Failed runs:", ""]
        parts += [f"- {run_of(row).name}: {row['status']}: {row['error']}" for row in failed]
    return "\n".join(parts) + "\n"


def format_duration(seconds: float) -> str:
    """'45s', '14m', '2h05m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{round(seconds / 60)}m"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m"


def progress_line(done: int, total: int, *, failed: int, eta: float | None,
                  width: int = 20) -> str:
    """'[#####---------------] 12/60 runs, 1 failed, eta 14m'."""
    filled = width if total == 0 else width * done // total
    text = f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} runs"
    if failed:
        text += f", {failed} failed"
    if done < total:
        text += f", eta {'?' if eta is None else format_duration(eta)}"
    return text


# ---------------------------------------------------------------------------- running

class Progress:
    """The progress bar on stderr, redrawn in place on a terminal, one line per update else."""

    def __init__(self, total: int, already_done: int, *, stream=None):
        self.total = total
        self.done = already_done
        self.finished_here = 0
        self.failed = 0
        self.started = time.monotonic()
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty()

    def eta(self) -> float | None:
        """Remaining runs times the wall time per run finished in this invocation."""
        if not self.finished_here:
            return None
        per_run = (time.monotonic() - self.started) / self.finished_here
        return per_run * (self.total - self.done)

    def update(self, *, ok: bool) -> None:
        """Counts one finished run and redraws."""
        self.done += 1
        self.finished_here += 1
        self.failed += not ok
        self.draw()

    def draw(self) -> None:
        line = progress_line(self.done, self.total, failed=self.failed, eta=self.eta())
        if self.in_place:
            self.stream.write(f"\r\033[K{line}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line above the bar (a failed run); the next update redraws the bar."""
        if self.in_place:
            self.stream.write("\r\033[K")
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()


def last_line(text: str) -> str:
    """The last non-blank line of a process's output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_one(run: Run, args: Sequence[str], *, out: str, timeout: int | None,
            env: dict[str, str]) -> dict:
    """Runs one training subprocess, saves its log, returns its CSV row."""
    clear_workdir(run, out)
    os.makedirs(os.path.dirname(run.workdir(out)), exist_ok=True)
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, code = _text(expired.stdout), _text(expired.stderr), None
    with open(run.log_path(out), "w") as f:
        f.write(f"$ {' '.join(args)}\n\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    if code is None:
        return result_row(run, None, status="timeout", error=f"no result after {timeout} s")
    if code != 0:
        return result_row(run, None, status="failed",
                          error=f"exit {code}: {last_line(stderr) or last_line(stdout)}")
    try:
        return result_row(run, read_results(os.path.join(run.workdir(out), "results.json")))
    except (OSError, ValueError) as error:
        return result_row(run, None, status="failed", error=f"no results.json: {error}")


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def execute(todo: Sequence[Run], make_args: Callable[[Run], list[str]], *, out: str,
            parallel: int, timeout: int | None, progress: Progress) -> dict[Run, dict]:
    """Runs `todo` with `parallel` workers; a failure is reported and the others go on."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if parallel > 1:  # several processes on one GPU: none may take all its memory
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    rows = {}
    progress.draw()
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_one, run, make_args(run), out=out, timeout=timeout,
                               env=env): run for run in todo}
        for future in concurrent.futures.as_completed(futures):
            run = futures[future]
            row = rows[run] = future.result()
            if row["status"] != "ok":
                progress.message(f"{row['status']}: {run.name}: {row['error']} "
                                 f"(log: {run.log_path(out)})")
            progress.update(ok=row["status"] == "ok")
    return rows


# ------------------------------------------------------------------------------- main

@dataclasses.dataclass
class Config:
    """The checked flags."""

    out: str
    runs: list[Run]
    seeds: list[int]
    flagfile: str
    extra: list[str]


def config_from_flags() -> Config:
    """Checks every flag; raises BenchError with a one-line message."""
    methods = check_choices("methods", FLAGS.methods, cli.METHODS)
    meta_nets = check_choices("meta_nets", FLAGS.meta_nets, META_NETS)
    noises = parse_noises(FLAGS.noises)
    seeds = parse_seeds(FLAGS.seeds)
    if not noises or not seeds:
        raise BenchError("--noises and --seeds must not be empty")
    settings = build_settings(methods, meta_nets, noises)
    return Config(out=os.path.abspath(FLAGS.out), runs=build_runs(settings, seeds),
                  seeds=seeds, flagfile=resolve_flagfile(FLAGS.base_flagfile),
                  extra=parse_extra(FLAGS.extra))


def main(argv: list[str]) -> None:
    """Plans, runs, aggregates and reports; exit 2 on bad flags, 1 if a run failed."""
    if len(argv) > 1:
        toolbox.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags()
        check_out(config.out, resume=FLAGS.resume)
    except BenchError as error:
        toolbox.fail(str(error))
    done, todo = plan(config.runs, config.out)
    progress = Progress(len(config.runs), len(done))
    rows = done | execute(
        todo, lambda run: command(run, out=config.out, flagfile=config.flagfile,
                                  extra=config.extra),
        out=config.out, parallel=FLAGS.parallel, timeout=FLAGS.timeout or None,
        progress=progress)
    progress.close()
    ordered = [rows[run] for run in config.runs]
    write_csv(ordered, os.path.join(config.out, "results.csv"))
    text = report(ordered, header=header_line(flagfile=FLAGS.base_flagfile,
                                              extra=config.extra, seeds=config.seeds))
    with open(os.path.join(config.out, "results.md"), "w") as f:
        f.write(text)
    print(text, end="")
    failed = sum(row["status"] != "ok" for row in ordered)
    if failed:
        print(f"error: {failed} of {len(ordered)} runs failed; rerun them with --resume",
              file=sys.stderr)
        sys.exit(1)



def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
