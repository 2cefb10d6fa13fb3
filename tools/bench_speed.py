"""Speed and memory of one training step: plain CE vs the CLID-MU meta step.

Prints a markdown table of steps/s and peak step memory for the plain `ce` step and the
`clid` meta step with each hypergradient route and scope, with ratios to the plain step.
Timings come from one process, modes interleaved round by round (this machine is noisy);
memory comes from one subprocess per mode: the peak bytes of TensorFlow's allocator during one
step, weights included (on CPU with TF_CPU_ALLOCATOR_USE_BFC=true, which gives the CPU the
GPU allocator's statistics). Shared set-up: tools/step_bench.py.

  python tools/bench_speed.py --backbone=resnet32 --batch_size=100 --meta_batch_size=100
  python tools/bench_speed.py --modes=fixmatch,fixmatch_clid --backbone=wrn28_2_fork \
      --batch_size=20 --uratio=7 --meta_batch_size=200
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

import step_bench

FLAGS = flags.FLAGS
flags.DEFINE_list("modes", ["ce", "clid_tape", "clid_recompute", "clid_jvp", "clid_last_layer"],
                  "Modes: ce, clid_tape, clid_recompute, clid_jvp, clid_last_layer (and vri_* "
                  "variants); DivideMix (--batch_size rows per part): "
                  + ", ".join(f"{k} ({v})" for k, v in step_bench.DIVIDEMIX_MODES.items())
                  + "; fixmatch, fixmatch_clid, flexmatch, flexmatch_clid (the "
                  "semi-supervised step). Ratios are to the first mode.")
flags.DEFINE_integer("rounds", 5, "Timing rounds (modes interleaved).")
flags.DEFINE_integer("steps", 5, "Steps per mode per round.")
flags.DEFINE_bool("jit_compile", False, "Compile each train step with XLA.")
flags.DEFINE_bool("memory", True, "Measure peak memory (one subprocess per mode).")
flags.DEFINE_string("memory_mode", None, "Internal: measure this mode's memory and exit.")


def build_step(mode: str):
    """A compiled train step of `mode` on the fixed synthetic batch."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if mode in step_bench.DIVIDEMIX_MODES:
        return step_bench.dividemix_step(mode)
    if mode in step_bench.SSL_MODES:
        model, data = step_bench.build_ssl_model(mode), step_bench.ssl_step_data()
    else:
        model = step_bench.build_model(mode)
        batch, meta = step_bench.synthetic_batches()
        data = {"train": batch, "meta": meta}
    step = tf.function(model.train_step, jit_compile=FLAGS.jit_compile)
    return lambda: step(data)["loss"].numpy()


def memory_in_subprocess(mode: str) -> int | None:
    args = [sys.executable, os.path.abspath(__file__), f"--memory_mode={mode}",
            *[a for a in sys.argv[1:] if not a.startswith("--memory_mode")]]
    env = {**os.environ, **step_bench.BFC_ALLOCATOR}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(line.split()[1])
    return None


def main(argv):
    del argv
    if FLAGS.memory_mode:
        run_step = build_step(FLAGS.memory_mode)
        run_step()  # trace and warm up
        print("PEAK", step_bench.peak_bytes(run_step))
        return
    steps = {mode: build_step(mode) for mode in FLAGS.modes}
    seconds = step_bench.median_seconds(steps, FLAGS.rounds, FLAGS.steps)
    memory = {mode: memory_in_subprocess(mode) if FLAGS.memory else None for mode in steps}
    device = step_bench.device_name()
    base_t = seconds[FLAGS.modes[0]]
    base_m = memory[FLAGS.modes[0]]
    print(f"\n{FLAGS.backbone}, batch {FLAGS.batch_size}, meta batch {FLAGS.meta_batch_size}, "
          f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, {device}, "
          f"jit_compile={FLAGS.jit_compile}; median of {FLAGS.rounds} rounds x "
          f"{FLAGS.steps} steps\n")
    base = FLAGS.modes[0]
    print(f"| mode | ms/step | steps/s | time vs {base} | peak step memory (MiB) | "
          f"memory vs {base} |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in steps:
        t = seconds[mode]
        m = memory[mode]
        mem = "n/a" if m is None else f"{m / 2**20:.0f}"
        mem_ratio = "n/a" if not (m and base_m) else f"{m / base_m:.2f}x"
        print(f"| {mode} | {t * 1e3:.1f} | {1 / t:.2f} | {t / base_t:.2f}x | {mem} | "
              f"{mem_ratio} |")


if __name__ == "__main__":
    app.run(main)
