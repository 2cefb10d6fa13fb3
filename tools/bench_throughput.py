"""Training throughput on real images: plain Keras, the project's plain path and each meta
step, in images per second and as ratios to plain Keras, measured in one process.

Every setting trains through `keras.Model.fit` on the training images of an npz (e.g.
Fashion-MNIST's 60,000 28x28 images; uint8 [N, H, W] or [N, H, W, C]) with their labels,
the settings interleaved round by round (this machine is noisy). A round of a setting is one
`fit(epochs=1, steps_per_epoch=--steps)`, timed from the end of its first step to the end
of its last, so fit's set-up and the input pipeline's start-up are left out of every
setting alike; the table gives the median over rounds.

  keras        the same backbone's logits as a plain Keras classifier: compile(SGD, sparse
               cross-entropy from logits, metrics=['accuracy']), fit(x, y, batch_size)
  plain        MetaReweightModel(backbone) without a meta-net: the project's cross-entropy
               path, fit(x, y, batch_size)
  full, top:N, last_layer, meta_every=K (or joined by '+', e.g. top:1+meta_every=2)
               MetaReweightModel(backbone, WeightNet()) with CLID on a 1000-image meta set
               (meta batch --meta_batch_size), the hypergradient by --meta_grad

Whether the input pipeline keeps up (the second table): the plain path fed by its real
stream against the same fit fed one batch held in memory (no reading, no shuffling), and
the stream read alone, without training.

  python tools/bench_throughput.py --data=fashion_mnist.npz --backbones=small_cnn,pooled_cnn
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

import bench_frontier
import toolbox

FLAGS = flags.FLAGS
KERAS, PLAIN = "keras", "plain"


def define_flags() -> None:
    flags.DEFINE_string("data", None, "An npz with x_train [N, H, W(, C)] uint8 and y_train [N].")
    flags.DEFINE_list("backbones", ["small_cnn", "pooled_cnn"], "Backbones, a table each.")
    flags.DEFINE_list("settings", [KERAS, PLAIN, "full", "top:1", "top:2", "last_layer",
                                   "meta_every=2", "meta_every=4"],
                      "keras, plain, and meta settings: a meta scope (full, last_layer, top:N), "
                      "meta_every=K, or both joined by '+'.")
    flags.DEFINE_integer("steps", 40, "Steps per setting per round.", lower_bound=4)
    flags.DEFINE_integer("rounds", 3, "Rounds (settings interleaved).", lower_bound=1)
    flags.DEFINE_integer("train_batch_size", 100, "Training batch size.", lower_bound=1)
    flags.DEFINE_integer("meta_batch", 100, "Meta batch size.", lower_bound=2)
    flags.DEFINE_enum("meta_grad", "recompute", ["recompute", "tape", "jvp"],
                      "Hypergradient route of the meta settings.")
    flags.DEFINE_bool("pipeline", True, "Also check that the input pipeline keeps up.")


def load_images(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 images [N, H, W, C], int labels [N], number of classes) of the npz's
    training split."""
    with np.load(path) as data:
        x, y = data["x_train"], data["y_train"].astype(np.int64)
    if x.ndim == 3:
        x = x[..., None]
    return x, y, int(y.max()) + 1


class _StepClock:
    """Seconds from the end of the first training step to the end of the last of a fit."""

    def __init__(self):
        import keras  # pylint: disable=import-outside-toplevel

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                clock.ends.append(time.perf_counter())

        self.callback = Callback()
        self.ends = []

    def seconds_per_step(self) -> float:
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def build_fit(setting: str, backbone: str, x: np.ndarray, y: np.ndarray, num_classes: int,
              *, steps: int, held_batch: bool = False):
    """A no-argument callable: one timed fit of `steps` steps of `setting`; returns its
    seconds per step. `held_batch`: feed the first batch, held in memory, every step."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import clid_tf  # pylint: disable=import-outside-toplevel
    from clid_tf.models import backbones  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    pixels = x[:1000].astype(np.float32) / 255.0
    net = backbones.build(backbone, num_classes=num_classes, input_shape=x.shape[1:],
                          mean=pixels.mean(axis=(0, 1, 2)), std=pixels.std(axis=(0, 1, 2)))
    batch_size = FLAGS.train_batch_size
    sgd = lambda: keras.optimizers.SGD(0.05, momentum=0.9)  # noqa: E731
    fit_args = dict(epochs=1, steps_per_epoch=steps, verbose=0)
    if setting == KERAS:
        model = keras.Model(net.inputs, net.outputs[0])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        fit_args.update(batch_size=batch_size, shuffle=True)
    elif setting == PLAIN:
        model = clid_tf.MetaReweightModel(net)
        model.compile(sgd())
        fit_args.update(batch_size=batch_size)
    else:
        parsed = bench_frontier.parse_setting(setting)
        model = clid_tf.MetaReweightModel(net, clid_tf.WeightNet(), meta_grad=FLAGS.meta_grad,
                                          **parsed.model_options())
        model.compile(sgd(), keras.optimizers.Adam(1e-3))
        model.set_meta_active(True)
        fit_args.update(batch_size=batch_size, meta_size=1000,
                        meta_batch_size=FLAGS.meta_batch)
    inputs = (x, y)
    if held_batch:  # the plain path's first stream element, read once and repeated
        first = next(iter(plain_stream(x, y, num_classes)))
        inputs = (tf.data.Dataset.from_tensors(first).repeat(),)
        fit_args = dict(epochs=1, steps_per_epoch=steps, verbose=0)

    def timed_fit() -> float:
        clock = _StepClock()
        model.fit(*inputs, callbacks=[clock.callback], **fit_args)
        return clock.seconds_per_step()
    return timed_fit


def plain_stream(x, y, num_classes: int):
    """The training stream MetaReweightModel.fit(x, y) makes without a meta-net
    (`clid_tf.data.user_data`): {'train': {'image', 'label'}} batches."""
    from clid_tf.data import user_data  # pylint: disable=import-outside-toplevel
    return user_data.prepare(x, y, num_classes=num_classes, batch_size=FLAGS.train_batch_size,
                             meta_size=0, meta_batch_size=FLAGS.meta_batch, seed=0,
                             with_meta=False).stream


def median_seconds(calls: dict, rounds: int) -> dict[str, float]:
    """Median seconds per step of each timed fit, after one warm-up fit each (tracing);
    settings interleaved round by round."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(call())
    return {name: statistics.median(t) for name, t in times.items()}


def throughput_table(backbone: str, seconds: dict[str, float], shape) -> str:
    base = seconds[KERAS] if KERAS in seconds else next(iter(seconds.values()))
    lines = [f"{backbone}, {'x'.join(str(d) for d in shape)} images, batch "
             f"{FLAGS.train_batch_size}, meta batch {FLAGS.meta_batch}, meta_grad "
             f"{FLAGS.meta_grad}, {device()}; median of {FLAGS.rounds} rounds x "
             f"{FLAGS.steps} steps", "",
             "| setting | ms/step | images/s | time vs keras |", "|---|---:|---:|---:|"]
    for name, t in seconds.items():
        lines.append(f"| {name} | {t * 1e3:.1f} | {FLAGS.train_batch_size / t:.0f} | "
                     f"{t / base:.2f}x |")
    return "\n".join(lines)


def pipeline_table(backbone: str, x, y, num_classes: int) -> str:
    """The plain path fed by its stream against a batch held in memory, and the stream read
    alone."""
    calls = {"plain, its stream": build_fit(PLAIN, backbone, x, y, num_classes,
                                            steps=FLAGS.steps),
             "plain, one batch held in memory": build_fit(PLAIN, backbone, x, y, num_classes,
                                                          steps=FLAGS.steps, held_batch=True)}
    seconds = median_seconds(calls, FLAGS.rounds)
    stream = iter(plain_stream(x, y, num_classes))
    next(stream)
    started = time.perf_counter()
    reads = 10 * FLAGS.steps
    for _ in range(reads):
        next(stream)
    read = (time.perf_counter() - started) / reads
    base = seconds["plain, its stream"]
    lines = [f"{backbone}: does the input pipeline keep up? (median of {FLAGS.rounds} rounds)",
             "", "| what | ms/step | images/s | vs plain with its stream |",
             "|---|---:|---:|---:|"]
    for name, t in {**seconds, "the stream read alone, no training": read}.items():
        lines.append(f"| {name} | {t * 1e3:.2f} | {FLAGS.train_batch_size / t:.0f} | "
                     f"{t / base:.2f}x |")
    return "\n".join(lines)


def device() -> str:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return "GPU" if tf.config.list_logical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        toolbox.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.data or not os.path.isfile(FLAGS.data):
        toolbox.fail(f"--data={FLAGS.data}: no such npz file")
    try:
        for item in FLAGS.settings:
            if item not in (KERAS, PLAIN):
                bench_frontier.parse_setting(item)
    except bench_frontier.bench_accuracy.BenchError as error:
        toolbox.fail(str(error))
    x, y, num_classes = load_images(FLAGS.data)
    for backbone in FLAGS.backbones:
        calls = {s: build_fit(s, backbone, x, y, num_classes, steps=FLAGS.steps)
                 for s in FLAGS.settings}
        seconds = median_seconds(calls, FLAGS.rounds)
        print(f"\n{throughput_table(backbone, seconds, x.shape[1:])}\n", flush=True)
        if FLAGS.pipeline:
            print(f"{pipeline_table(backbone, x, y, num_classes)}\n", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
