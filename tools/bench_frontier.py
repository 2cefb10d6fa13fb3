"""The speed/accuracy frontier of cheaper meta steps: top:N scopes, last_layer, meta_every.

Two parts, each optional:

1. Timing (`--timing`): one table per backbone (`--backbones`) of the time per training step
   of every setting against the plain ce step, measured in one process with the settings
   interleaved round by round (tools/step_bench.py; synthetic batches of
   --image_size x --image_size x --channels). A meta_every=k setting is timed over a
   multiple of k consecutive steps, so the figure is its mean step.
2. Accuracy (`--accuracy`): the same settings trained through the CLI on 8x8 digits with a
   residual backbone (`--accuracy_backbone`), one run per setting and seed
   (tools/bench_accuracy.py's machinery: one subprocess each, OUT/<setting>/<cell>/seed<k>,
   resumable with --resume); the table gives mean ± std over seeds of the last-epoch and
   the lowest-meta-CLID-epoch test accuracy, and the mean training time.

A setting is a meta scope (full, last_layer, top:N), meta_every=K, or both joined by '+'
(e.g. top:1+meta_every=2); ce (no meta-net) is always included as the reference.

  python tools/bench_frontier.py --out=bench/frontier --backbones=resnet32,wrn28_2
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

import toolbox

import bench_accuracy
import step_bench

from clid_tf import cli
from clid_tf.core import meta_scope

FLAGS = flags.FLAGS
CE = "ce"


@dataclasses.dataclass(frozen=True)
class FrontierSetting:
    """A meta scope and a meta_every period, or the plain ce step."""

    name: str
    scope: str = "full"
    every: int = 1

    @property
    def folder(self) -> str:
        """A folder name: 'top1-every2', 'last_layer', 'full', 'ce'."""
        return self.name.replace(":", "").replace("meta_every=", "every").replace("+", "-")

    def model_options(self) -> dict:
        """MetaReweightModel arguments."""
        return {"meta_scope": self.scope, "meta_every": self.every}

    def cli_flags(self) -> list[str]:
        """Training flags of this setting."""
        if self.name == CE:
            return []
        return [f"--meta_scope={self.scope}", f"--meta_every={self.every}"]


def parse_setting(text: str) -> FrontierSetting:
    """'top:1', 'meta_every=2', 'top:1+meta_every=2', 'full', 'last_layer', 'ce'."""
    if text == CE:
        return FrontierSetting(CE)
    scope, every = "full", 1
    for part in text.split("+"):
        if part.startswith("meta_every="):
            count = part[len("meta_every="):]
            if not count.isdigit() or int(count) < 1:
                raise bench_accuracy.BenchError(f"--settings item {text!r}: meta_every must "
                                                "be an integer >= 1")
            every = int(count)
        else:
            try:
                scope = str(meta_scope.parse(part))
            except ValueError as error:
                raise bench_accuracy.BenchError(f"--settings item {text!r}: {error}") from None
    return FrontierSetting(text, scope, every)


def parse_settings(items) -> list[FrontierSetting]:
    """The settings, ce first (the reference), duplicates dropped."""
    settings = [parse_setting(item) for item in items if item != CE]
    if not settings:
        raise bench_accuracy.BenchError("--settings names no meta setting")
    return list(dict.fromkeys([FrontierSetting(CE), *settings]))


def whole_periods(steps: int, settings) -> int:
    """`steps` rounded up to a multiple of every setting's meta_every period."""
    period = math.lcm(*[s.every for s in settings])
    return -(-steps // period) * period


def define_flags() -> None:
    """The tool's own flags (step_bench defines the problem-size ones at import)."""
    flags.DEFINE_list("settings", ["full", "top:1", "top:2", "last_layer", "meta_every=2",
                                   "meta_every=4"],
                      "Settings (ce is always added): a meta scope (full, last_layer, top:N), "
                      "meta_every=K, or both joined by '+'.")
    flags.DEFINE_bool("timing", True, "Time each setting per backbone.")
    flags.DEFINE_list("backbones", ["resnet32", "wrn28_2"], "Backbones of the timing tables.")
    flags.DEFINE_integer("rounds", 5, "Timing rounds (settings interleaved).", lower_bound=1)
    flags.DEFINE_integer("steps", 4, "Steps per setting per round; rounded up to a multiple of "
                         "every meta_every period.", lower_bound=1)
    flags.DEFINE_bool("accuracy", True, "Train every setting on digits through the CLI.")
    flags.DEFINE_string("out", None, "Output folder of the accuracy runs (required with "
                        "--accuracy). Must be new or empty unless --resume.")
    flags.DEFINE_bool("resume", False, "Continue the accuracy runs in a non-empty --out.")
    flags.DEFINE_string("accuracy_backbone", "resnet32", "Residual backbone of the digits runs.")
    flags.DEFINE_string("noise", "sym:0.4", "Noise of the digits runs, kind:rate.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the digits runs.")
    flags.DEFINE_string("base_flagfile", "flags/digits_common.cfg", "Flagfile of every run.")
    flags.DEFINE_list("extra", [], "Extra --flag=value strings passed to every run.")
    flags.DEFINE_integer("parallel", 1, "Concurrent training subprocesses.", lower_bound=1)
    flags.DEFINE_integer("timeout", 3600, "Seconds one run may take (0: no limit).",
                         lower_bound=0)


# ------------------------------------------------------------------------------ timing

def time_settings(backbone: str, settings, *, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per training step of each setting on `backbone` (one process; `steps`
    a multiple of every meta_every period, so each round holds whole periods)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    FLAGS.backbone = backbone  # read by step_bench.build_model
    batch, meta = step_bench.synthetic_batches()
    data = {"train": batch, "meta": meta}
    calls = {}
    for setting in settings:
        model = (step_bench.build_model(CE) if setting.name == CE
                 else step_bench.build_model("clid_recompute", **setting.model_options()))
        step = tf.function(model.train_step)
        calls[setting.name] = lambda step=step: step(data)["loss"].numpy()
    return step_bench.median_seconds(calls, rounds, steps)


def timing_table(backbone: str, seconds: dict[str, float], *, rounds: int, steps: int) -> str:
    base = seconds[CE]
    lines = [f"{backbone}, batch {FLAGS.batch_size}, meta batch {FLAGS.meta_batch_size}, "
             f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, "
             f"{step_bench.device_name()}; median of {rounds} rounds x {steps} steps", "",
             "| setting | ms/step | time vs ce |", "|---|---:|---:|"]
    for name, t in seconds.items():
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / base:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- accuracy

def accuracy_rows(settings, *, out: str, noise: tuple[str, float], seeds, flagfile: str,
                  extra, parallel: int, timeout: int | None) -> dict[str, list]:
    """Runs every setting x seed whose results.json is not in OUT/<setting> yet, `parallel`
    at a time; {setting name: CSV rows of its seeds}."""
    kind, rate = noise
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    rows, jobs = {}, []
    for setting in settings:
        cell = (bench_accuracy.Setting(CE, bench_accuracy.NO_META_NET, kind, rate)
                if setting.name == CE else bench_accuracy.Setting("clid", "wnet", kind, rate))
        runs = bench_accuracy.build_runs([cell], seeds)
        folder = os.path.join(out, setting.folder)
        done, todo = bench_accuracy.plan(runs, folder)
        rows[setting.name] = {run: done.get(run) for run in runs}
        run_flags = [f"--backbone={FLAGS.accuracy_backbone}", *setting.cli_flags(), *extra]
        jobs += [(setting.name, run, folder, bench_accuracy.command(
            run, out=folder, flagfile=flagfile, extra=run_flags)) for run in todo]
    progress = bench_accuracy.Progress(sum(len(r) for r in rows.values()),
                                       sum(len(r) for r in rows.values()) - len(jobs))
    progress.draw()
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(bench_accuracy.run_one, run, args, out=folder, timeout=timeout,
                               env=env): (name, run, folder)
                   for name, run, folder, args in jobs}
        for future in concurrent.futures.as_completed(futures):
            name, run, folder = futures[future]
            row = rows[name][run] = future.result()
            if row["status"] != "ok":
                progress.message(f"{row['status']}: {name} {run.name}: {row['error']} "
                                 f"(log: {run.log_path(folder)})")
            progress.update(ok=row["status"] == "ok")
    progress.close()
    return {name: list(setting_rows.values()) for name, setting_rows in rows.items()}


def accuracy_table(rows: dict[str, list]) -> str:
    lines = ["| setting | last | CLID-selected | train s | seeds |", "|---|---:|---:|---:|---:|"]
    for name, setting_rows in rows.items():
        ok = [r for r in setting_rows if r["status"] == "ok"]
        cells = [bench_accuracy.format_mean_std(
            bench_accuracy.mean_std([r[c] for r in ok if r[c] is not None]), len(ok))
            for c in ("final", "selected")]
        seconds = bench_accuracy.mean_std([r["train_seconds"] for r in ok
                                           if r["train_seconds"] is not None])
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | "
                     f"{'-' if seconds is None else f'{seconds[0]:.0f}'} | "
                     f"{len(ok)}/{len(setting_rows)} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main

def main(argv: list[str]) -> None:
    if len(argv) > 1:
        toolbox.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        settings = parse_settings(FLAGS.settings)
        noise = bench_accuracy.parse_noises([FLAGS.noise])[0]
        seeds = bench_accuracy.parse_seeds(FLAGS.seeds)
        extra = bench_accuracy.parse_extra(FLAGS.extra)
        if FLAGS.accuracy:
            if not FLAGS.out:
                raise bench_accuracy.BenchError("--out is required with --accuracy")
            flagfile = bench_accuracy.resolve_flagfile(FLAGS.base_flagfile)
            bench_accuracy.check_out(os.path.abspath(FLAGS.out), resume=FLAGS.resume)
    except bench_accuracy.BenchError as error:
        toolbox.fail(str(error))
    if FLAGS.timing:
        steps = whole_periods(FLAGS.steps, settings)
        for backbone in FLAGS.backbones:
            seconds = time_settings(backbone, settings, rounds=FLAGS.rounds, steps=steps)
            print(f"\n{timing_table(backbone, seconds, rounds=FLAGS.rounds, steps=steps)}\n",
                  flush=True)
    if FLAGS.accuracy:
        rows = accuracy_rows(settings, out=os.path.abspath(FLAGS.out), noise=noise,
                             seeds=seeds, flagfile=flagfile, extra=extra,
                             parallel=FLAGS.parallel, timeout=FLAGS.timeout or None)
        print(f"\nDigits, {FLAGS.accuracy_backbone}, {FLAGS.noise} noise, seeds "
              f"{','.join(str(s) for s in seeds)}, base `{FLAGS.base_flagfile}`, extra "
              f"`{' '.join(extra) or 'none'}`; test accuracy mean ± std over seeds\n")
        print(accuracy_table(rows))
        failed = sum(r["status"] != "ok" for setting_rows in rows.values() for r in setting_rows)
        if failed:
            print(f"error: {failed} runs failed; rerun them with --resume", file=sys.stderr)
            sys.exit(1)



if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
