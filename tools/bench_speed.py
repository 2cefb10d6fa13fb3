"""Speed and memory of one training step: plain CE vs the CLID-MU meta step.

Prints a markdown table of steps/s and peak step memory for the plain `ce` step and the
`clid` meta step with each hypergradient route and scope, with ratios to the plain step.
Timings come from one process, modes interleaved round by round (this machine is noisy);
memory comes from one subprocess per mode: the peak bytes of TensorFlow's allocator during one
step, weights included (on CPU with TF_CPU_ALLOCATOR_USE_BFC=true, which gives the CPU the
GPU allocator's statistics).

  python tools/bench_speed.py --backbone=resnet32 --batch_size=100 --meta_batch_size=100
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "resnet32", "Backbone name (clid_tf.backbones.BACKBONES).")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_integer("meta_batch_size", 100, "Meta batch size.")
flags.DEFINE_integer("image_size", 32, "Square image side.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_list("modes", ["ce", "clid_tape", "clid_recompute", "clid_jvp", "clid_last_layer"],
                  "Modes: ce, clid_tape, clid_recompute, clid_jvp, clid_last_layer (and vri_* "
                  "variants).")
flags.DEFINE_integer("rounds", 5, "Timing rounds (modes interleaved).")
flags.DEFINE_integer("steps", 5, "Steps per mode per round.")
flags.DEFINE_bool("jit_compile", False, "Compile each train step with XLA.")
flags.DEFINE_bool("memory", True, "Measure peak memory (one subprocess per mode).")
flags.DEFINE_string("memory_mode", None, "Internal: measure this mode's memory and exit.")


def build_step(mode: str):
    """A compiled train step of `mode` and its fixed input batch."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from clid_tf import backbones, experiment, meta_model, objectives  # noqa: E402

    keras.utils.set_random_seed(0)
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    net = backbones.build(FLAGS.backbone, num_classes=FLAGS.num_classes, input_shape=shape,
                          mean=(0.5,) * FLAGS.channels, std=(0.25,) * FLAGS.channels)
    rng = np.random.default_rng(0)
    batch = {"image": tf.constant(rng.integers(0, 256, (FLAGS.batch_size, *shape)),
                                  tf.float32),
             "label": tf.constant(rng.integers(0, FLAGS.num_classes, FLAGS.batch_size),
                                  tf.int32)}
    meta = {"image": tf.constant(rng.integers(0, 256, (FLAGS.meta_batch_size, *shape)),
                                 tf.float32)}
    if mode == "ce":
        model = meta_model.MetaReweightModel(net)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    else:
        kind, route = mode.split("_", 1)
        meta_net = experiment.build_meta_net("wnet" if kind == "clid" else "vri",
                                             num_classes=FLAGS.num_classes,
                                             feature_dim=net.feature_dim, vri_kl=0.01, seed=0)
        model = meta_model.MetaReweightModel(
            net, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5),
            meta_grad="tape" if route == "last_layer" else route,
            meta_scope="last_layer" if route == "last_layer" else "full")
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    step = tf.function(model.train_step, jit_compile=FLAGS.jit_compile)
    data = {"train": batch, "meta": meta}
    return lambda: step(data)["loss"].numpy()


def peak_memory_bytes(run_step) -> int:
    """Peak bytes held by TensorFlow's allocator during one step (weights included).

    On CPU the subprocess runs with TF_CPU_ALLOCATOR_USE_BFC=true, which makes the CPU
    allocator keep the same statistics as the GPU one.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    run_step()  # trace and warm up
    tf.config.experimental.reset_memory_stats(device)
    run_step()
    return tf.config.experimental.get_memory_info(device)["peak"]


def memory_in_subprocess(mode: str) -> int | None:
    args = [sys.executable, os.path.abspath(__file__), f"--memory_mode={mode}",
            *[a for a in sys.argv[1:] if not a.startswith("--memory_mode")]]
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(line.split()[1])
    return None


def main(argv):
    del argv
    if FLAGS.memory_mode:
        print("PEAK", peak_memory_bytes(build_step(FLAGS.memory_mode)))
        return
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    steps = {mode: build_step(mode) for mode in FLAGS.modes}
    for run_step in steps.values():  # trace, compile, warm caches
        run_step()
        run_step()
    times = {mode: [] for mode in steps}
    for _ in range(FLAGS.rounds):
        for mode, run_step in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                run_step()
            times[mode].append((time.perf_counter() - start) / FLAGS.steps)
    memory = {mode: memory_in_subprocess(mode) if FLAGS.memory else None for mode in steps}
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    base_t = statistics.median(times[FLAGS.modes[0]])
    base_m = memory[FLAGS.modes[0]]
    print(f"\n{FLAGS.backbone}, batch {FLAGS.batch_size}, meta batch {FLAGS.meta_batch_size}, "
          f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, {device}, "
          f"jit_compile={FLAGS.jit_compile}; median of {FLAGS.rounds} rounds x "
          f"{FLAGS.steps} steps\n")
    print("| mode | ms/step | steps/s | time vs ce | peak step memory (MiB) | memory vs ce |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in steps:
        t = statistics.median(times[mode])
        m = memory[mode]
        mem = "n/a" if m is None else f"{m / 2**20:.0f}"
        mem_ratio = "n/a" if not (m and base_m) else f"{m / base_m:.2f}x"
        print(f"| {mode} | {t * 1e3:.1f} | {1 / t:.2f} | {t / base_t:.2f}x | {mem} | "
              f"{mem_ratio} |")


if __name__ == "__main__":
    app.run(main)
