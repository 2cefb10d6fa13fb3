"""Where an epoch's wall time goes outside the train steps (issue 15's overhead budget).

Runs one `clid_tf.train` run in this process on a CIFAR-shaped synthetic npz (uint8
32x32x3 images, random labels: the content does not matter for time) and times, per
epoch: the train steps (Keras' train function calls), and each callback's epoch-end work
(label-free selection pass, TensorBoard views and events, the NaN guard's check,
checkpoints), Keras' own validation pass, and the final export. Every callback method is
wrapped with a timer; nothing else changes, so the run's results are those of a normal run.
Epoch 1 is the warm-up (plain steps), later epochs meta steps; the table averages the
epochs after the first (tracing happens in the first step of each phase).

  python tools/bench_overhead.py --backbone=resnet32 --num_train=5000 --epochs=3
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("num_train", 5000, "Training images.")
    flags.DEFINE_integer("num_test", 1000, "Test images.")
    flags.DEFINE_integer("bench_epochs", 3, "Epochs (the first is the warm-up).")
    flags.DEFINE_string("bench_backbone", "resnet32", "Backbone.")
    flags.DEFINE_list("train_flags", [], "More training flags, e.g. --select_keep=5.")


class _Clock:
    """Seconds spent per (category, epoch), from wrapped callables."""

    def __init__(self):
        self.spent = collections.defaultdict(float)
        self.epoch = 0

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[(name, self.epoch)] += time.perf_counter() - started
        return timed


def main(argv):
    del argv
    import keras  # pylint: disable=import-outside-toplevel
    from clid_tf import cli  # pylint: disable=import-outside-toplevel
    clock = _Clock()
    work = tempfile.mkdtemp(prefix="clid_overhead_")
    rng = np.random.default_rng(0)
    path = os.path.join(work, "cifar_shaped.npz")
    np.savez(path, x_train=rng.integers(0, 256, (FLAGS.num_train, 32, 32, 3), np.uint8),
             y_train=np.arange(FLAGS.num_train) % 10,
             x_test=rng.integers(0, 256, (FLAGS.num_test, 32, 32, 3), np.uint8),
             y_test=np.arange(FLAGS.num_test) % 10)
    original_fit = keras.Model.fit

    def fit(model, *args, callbacks=(), **kwargs):
        start, end = _epoch_clock(clock)
        for callback in callbacks:  # every callback method that does work per epoch
            for method in ("on_epoch_begin", "on_epoch_end", "on_train_end"):
                setattr(callback, method, clock.wrap(type(callback).__name__,
                                                     getattr(callback, method)))
        original_make = model.make_train_function

        def make_train_function(force=False):
            if model.train_function is not None and not force:
                return model.train_function
            original_make(force)  # sets model.train_function
            model.train_function = clock.wrap("train steps", model.train_function)
            return model.train_function

        model.make_train_function = make_train_function
        model.evaluate = clock.wrap("validation", model.evaluate)
        return original_fit(model, *args, callbacks=[start, *callbacks, end], **kwargs)

    keras.Model.fit = fit
    from clid_tf.runs import export  # pylint: disable=import-outside-toplevel
    export.export_saved_model = clock.wrap("export (once)", export.export_saved_model)
    FLAGS([sys.argv[0], f"--dataset=npz:{path}", f"--backbone={FLAGS.bench_backbone}",
           f"--workdir={os.path.join(work, 'run')}", f"--epochs={FLAGS.bench_epochs}",
           "--warmup_epochs=1", "--meta_size=1000", "--verbose=0", *FLAGS.train_flags])
    started = time.perf_counter()
    cli.run()
    total = time.perf_counter() - started
    print(report(clock, total))


def _epoch_clock(clock: _Clock):
    """Two callbacks, first and last in the list: together they time each whole epoch
    (every callback's epoch work included) and count the epochs."""
    import keras  # pylint: disable=import-outside-toplevel

    class Start(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            clock.epoch = epoch + 1
            clock.spent[("epoch", clock.epoch)] -= time.perf_counter()

    class End(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.spent[("epoch", clock.epoch)] += time.perf_counter()

    return Start(), End()


def report(clock: _Clock, total: float) -> str:
    epochs = sorted({e for _, e in clock.spent if e > 1})
    names = sorted({n for n, _ in clock.spent} - {"epoch"})
    rows = [(name, np.mean([clock.spent[(name, e)] for e in epochs])) for name in names
            if name != "export (once)"]
    epoch_time = np.mean([clock.spent[("epoch", e)] for e in epochs])
    lines = [f"{FLAGS.bench_backbone}, {FLAGS.num_train} CIFAR-shaped training images, "
             f"{FLAGS.num_test} test, meta set 1000; mean of epochs {epochs[0]}..{epochs[-1]} "
             f"(meta epochs); flags {' '.join(FLAGS.train_flags) or '(defaults)'}", "",
             "| part | seconds per epoch | share of the epoch |", "|---|---:|---:|"]
    for name, seconds in sorted(rows, key=lambda r: -r[1]):
        lines.append(f"| {name} | {seconds:.2f} | {seconds / epoch_time:.1%} |")
    steps = dict(rows).get("train steps", 0.0)
    other = epoch_time - sum(seconds for _, seconds in rows)
    lines += [f"| the rest (Keras' loop, progress, data waits) | {other:.2f} | "
              f"{other / epoch_time:.1%} |",
              f"| **epoch wall time** | {epoch_time:.2f} | 100% |",
              f"| **outside the train steps** | {epoch_time - steps:.2f} | "
              f"{(epoch_time - steps) / epoch_time:.1%} |", "",
              f"whole run {total:.1f} s (export, once: "
              f"{clock.spent.get(('export (once)', clock.epoch), 0.0):.1f} s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    from clid_tf import cli as _cli
    _cli.define_flags()
    define_flags()
    app.run(main)
