"""Streaming benchmark: training on image folders of growing size, throughput and peak RSS.

For each size N (default 10k and 100k) a class-folder tree of N 32x32 PNGs (plus a fixed
test split) is generated with tools/make_image_folder.py (or reused from --data_root), and
one `python -m clid_tf.train --dataset=folder:...` run trains CLID-MU on it for a FIXED
amount of work (--steps_per_epoch steps of --batch_size, --epochs epochs, the same meta set
and selection sizes), so only the size of the data on disk differs between the rows. Each
run is its own process; its peak resident memory is the kernel's ru_maxrss of that child
(os.wait4), its throughput the training images per second of wall time inside the run
(results.json train_seconds, which includes the per-epoch selection and evaluation). If
the loader held the data in memory, the peak RSS would grow with N; streamed, it should
not: the goal is peak RSS at the largest N within 1.3x of the smallest.

  python tools/bench_streaming.py --sizes=10000,100000 --data_root=/tmp/folders
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

from toolbox import ROOT

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("sizes", ["10000", "100000"], "Training images per row.")
    flags.DEFINE_string("data_root", "/tmp/clid_streaming", "Where the folders are made "
                        "(reused when present).")
    flags.DEFINE_string("out", None, "Folder for the runs (default: DATA_ROOT/runs-<time>).")
    flags.DEFINE_integer("test_images", 1000, "Test images of every folder.")
    flags.DEFINE_integer("image_size", 32, "Image side.")
    flags.DEFINE_integer("epochs", 2, "Epochs per run (the first is the warm-up).")
    flags.DEFINE_integer("steps_per_epoch", 50, "Training steps per epoch.")
    flags.DEFINE_integer("batch_size", 100, "Training batch size.")
    flags.DEFINE_string("backbone", "small_cnn", "Backbone of the runs.")
    flags.DEFINE_list("extra", [], "More training flags for every run.")


def make_folder(size: int) -> str:
    path = os.path.join(FLAGS.data_root, f"folder{size}")
    if os.path.isdir(os.path.join(path, "train")):
        return path
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_image_folder.py"),
                    f"--output_dir={path}", f"--num_images={size}",
                    f"--test_images={FLAGS.test_images}", f"--image_size={FLAGS.image_size}"],
                   check=True)
    return path


def run(size: int, folder: str, out: str) -> dict:
    """One training run in its own process: (peak RSS MiB, images/s, seconds)."""
    workdir = os.path.join(out, f"n{size}")
    command = [sys.executable, "-m", "clid_tf.train", f"--dataset=folder:{folder}",
               f"--workdir={workdir}", f"--backbone={FLAGS.backbone}",
               f"--epochs={FLAGS.epochs}", "--warmup_epochs=1",
               f"--steps_per_epoch={FLAGS.steps_per_epoch}",
               f"--batch_size={FLAGS.batch_size}", "--meta_size=1000",
               "--meta_batch_size=100", "--export=none", "--verbose=0", *FLAGS.extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    started = time.time()
    with open(workdir + ".log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"run n={size} failed; see {workdir}.log")
    results = json.load(open(os.path.join(workdir, "results.json")))
    images = FLAGS.epochs * FLAGS.steps_per_epoch * FLAGS.batch_size
    return {"size": size, "peak_rss_mib": usage.ru_maxrss / 1024.0,
            "train_seconds": results["train_seconds"], "wall_seconds": wall,
            "images_per_second": images / results["train_seconds"],
            "test_accuracy": results.get("final_test_accuracy")}


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"small_cnn on generated {FLAGS.image_size}x{FLAGS.image_size}x3 PNG folders, "
             f"{FLAGS.epochs} epochs x {FLAGS.steps_per_epoch} steps x batch "
             f"{FLAGS.batch_size} per run (same work for every size), meta set 1000, test "
             f"{FLAGS.test_images}; {platform.machine()}, {os.cpu_count()} CPU cores",
             "",
             "| training images | peak RSS (MiB) | RSS vs smallest | train images/s | "
             "run seconds | test accuracy |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        accuracy = "n/a" if row["test_accuracy"] is None else f"{row['test_accuracy']:.3f}"
        lines.append(f"| {row['size']:,} | {row['peak_rss_mib']:.0f} | "
                     f"{row['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | "
                     f"{row['images_per_second']:.0f} | {row['train_seconds']:.1f} | "
                     f"{accuracy} |")
    return "\n".join(lines)


def main(argv):
    del argv
    sizes = [int(s) for s in FLAGS.sizes]
    out = FLAGS.out or os.path.join(FLAGS.data_root, time.strftime("runs-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    rows = []
    for size in sizes:
        folder = make_folder(size)
        rows.append(run(size, folder, out))
        print(f"n={size}: peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB, "
              f"{rows[-1]['images_per_second']:.0f} images/s", flush=True)
    text = table(rows)
    print(text)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
