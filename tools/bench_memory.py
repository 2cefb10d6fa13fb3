"""Peak memory against the number of training images: the training command's peak
resident memory at each size, for each flagfile, one child process per run.

For each size N of --sizes, N training images of --data (the first N of one seeded
permutation, so each size's images include the smaller sizes'; with all its test images and
its class names) are written to an npz under --out, and each flagfile of
--flagfiles trains --epochs epochs on it (--warmup_epochs of them warm-up, so both a warm-up
and a meta or co-divide epoch run) through `python -m clid_tf.train`. The child's peak
resident set size comes from the kernel (`os.wait4`'s rusage, ru_maxrss), so it covers
everything the run holds: TensorFlow, the data, the model, the selection and TensorBoard.
The table gives it with its growth over the smallest size, beside the growth of the
training images themselves (N uint8 images): memory is flat when the run grows by no more
than its data.

  python tools/bench_memory.py --data=fashion_mnist.npz --out=/tmp/bench_memory \\
      --sizes=10000,30000,60000 --flagfiles=flags/fmnist_clid.cfg,flags/fmnist_dividemix.cfg
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
from absl import app, flags

import toolbox

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("data", None, "An npz of x_train, y_train, x_test, y_test "
                        "(class_names optional), e.g. Fashion-MNIST (required).")
    flags.DEFINE_string("out", None, "Output folder: the subset npz files, the runs and "
                        "their logs (required).")
    flags.DEFINE_list("sizes", ["10000", "30000", "60000"], "Training images per run.")
    flags.DEFINE_list("flagfiles", ["flags/fmnist_clid.cfg", "flags/fmnist_dividemix.cfg"],
                      "The settings to run at each size.")
    flags.DEFINE_integer("epochs", 2, "Epochs per run.", lower_bound=1)
    flags.DEFINE_integer("warmup_epochs", 1, "Warm-up epochs among them.", lower_bound=0)
    flags.DEFINE_list("extra", [], "More training flags for every run.")
    flags.mark_flags_as_required(["data", "out"])


def write_subset(source: dict, size: int, path: str) -> int:
    """Writes `size` training samples (the first of a permutation seeded 0: a file sorted
    by class still gives every class) and every test sample of `source` to `path`; returns
    the bytes of those training images."""
    if size > len(source["x_train"]):
        toolbox.fail(f"--sizes asks for {size} training images; {FLAGS.data} has "
                     f"{len(source['x_train'])}")
    picked = np.random.default_rng(0).permutation(len(source["x_train"]))[:size]
    subset = {"x_train": source["x_train"][picked], "y_train": source["y_train"][picked],
              **{k: v for k, v in source.items() if k not in ("x_train", "y_train")}}
    np.savez(path, **subset)
    return int(subset["x_train"].nbytes)


def peak_rss_mib(args: list[str], log_path: str) -> tuple[float, float]:
    """Runs `python -m clid_tf.train args` in the repository; (its peak resident set size in
    MiB, its wall seconds). A failed run stops the tool with its log's last line."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(toolbox.cli_command("clid_tf.train", args), cwd=toolbox.ROOT,
                                env=toolbox.quiet_env(), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        lines = open(log_path).read().strip().splitlines() or ["(no output)"]
        toolbox.fail(f"the run exited with {proc.returncode} ({log_path}): {lines[-1]}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - started  # Linux: KiB


def table(rows: list[dict]) -> str:
    """Markdown: one line per (flagfile, size), the growth over that flagfile's smallest."""
    lines = ["| flagfile | training images | image bytes (MiB) | peak RSS (MiB) | "
             "RSS growth (MiB) | image growth (MiB) | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    first = {}
    for row in rows:
        base = first.setdefault(row["flagfile"], row)
        lines.append(
            f"| {row['flagfile']} | {row['size']} | {row['image_mib']:.1f} | "
            f"{row['rss_mib']:.0f} | {row['rss_mib'] - base['rss_mib']:+.0f} | "
            f"{row['image_mib'] - base['image_mib']:+.1f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    with np.load(FLAGS.data, allow_pickle=False) as f:
        source = {k: f[k] for k in f.files}
    rows = []
    for size in sorted(int(s) for s in FLAGS.sizes):
        path = os.path.join(FLAGS.out, f"train{size}.npz")
        image_bytes = write_subset(source, size, path)
        for flagfile in FLAGS.flagfiles:
            name = os.path.splitext(os.path.basename(flagfile))[0]
            workdir = os.path.join(FLAGS.out, f"{name}-{size}")
            args = [f"--flagfile={flagfile}", f"--dataset=npz:{path}", f"--workdir={workdir}",
                    f"--epochs={FLAGS.epochs}", f"--warmup_epochs={FLAGS.warmup_epochs}",
                    "--export=none", "--verbose=0", *FLAGS.extra]
            shutil.rmtree(workdir, ignore_errors=True)  # this tool's own run of an earlier call
            rss, seconds = peak_rss_mib(args, workdir + ".log")
            rows.append({"flagfile": flagfile, "size": size, "image_mib": image_bytes / 2**20,
                         "rss_mib": rss, "seconds": seconds})
            print(f"{flagfile} {size}: peak RSS {rss:.0f} MiB, {seconds:.0f} s", flush=True)
    print(table(sorted(rows, key=lambda r: (FLAGS.flagfiles.index(r["flagfile"]),
                                            r["size"]))))


if __name__ == "__main__":
    define_flags()
    app.run(main)
