"""The command line run as a user runs it (a subprocess), and its one-line errors."""

import glob
import os
import re
import subprocess
import sys

import tensorflow as tf

from tests.helpers import QUIET_ENV, ROOT

# The smallest digits run that trains through the warm-up into meta epochs.
FAST = ["--epochs=2", "--warmup_epochs=1", "--meta_size=100", "--verbose=0"]
# TensorFlow's C++ start-up log (printed at import, before absl::InitializeLog, whatever
# TF_CPP_MIN_LOG_LEVEL says): not ours, so not counted. Python absl warnings are.
TF_NATIVE_LOG = re.compile(r"[IWEF]0000 00:00:|WARNING: All log messages before absl::")


def run_cli(*args, cwd=ROOT, module="clid_tf.train", timeout=300):
    """`python -m clid_tf.train ARGS` (or another module) in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(proc) -> list[str]:
    """The process's non-blank stderr lines, TensorFlow's native start-up log left out."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and not TF_NATIVE_LOG.match(line)]


def assert_one_line_error(proc, needle, code=2):
    """Exit `code`, no traceback, and exactly one `error:` line that contains `needle`."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = error_lines(proc)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


def scalars(event_dir):
    """tag -> values in step order, over every event file (one per fit phase)."""
    values = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (tf.make_ndarray(value.tensor) if value.HasField("tensor")
                          else value.simple_value)
                values.setdefault(value.tag, []).append((event.step, float(number)))
    return {tag: [v for _, v in sorted(pairs)] for tag, pairs in values.items()}


def images(event_dir):
    """tag -> decoded image summaries (uint8 [H, W, C]) in step order, over every event file."""
    found = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                encoded = tf.make_ndarray(value.tensor)[2]  # [width, height, png]
                found.setdefault(value.tag, []).append(
                    (event.step, tf.io.decode_png(encoded).numpy()))
    return {tag: [image for _, image in sorted(pairs, key=lambda p: p[0])]
            for tag, pairs in found.items()}
