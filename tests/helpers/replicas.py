"""Plumbing shared by the distributed_steps.py scripts and their tests: a strategy over
logical CPUs, and running a script in a subprocess (a process fixes its logical devices
before TensorFlow starts, so each device layout needs its own). `--strategy=compare` runs
one device and MirroredStrategy in the same process, one after the other. No TensorFlow at
import."""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import ROOT



def env(**extra) -> dict:
    """The subprocess environment: quiet TensorFlow, the checkout on the path (the scripts
    import the tests' helpers)."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, **extra}


def run(script: str, out, *args, env_vars: dict | None = None):
    """Runs the script (a path) with OUT.npz and `args`; returns the saved state (np.load)."""
    proc = subprocess.run([sys.executable, script, str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=env_vars or env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def compare(script: str, out, *args) -> tuple[dict, dict]:
    """(one device's state, two mirrored replicas' state) of the script's steps, both run
    in one subprocess (`--strategy=compare`)."""
    both = run(script, out, "--strategy=compare", "--replicas=2", *args)
    return tuple({key[len(prefix):]: both[key] for key in both.files if key.startswith(prefix)}
                 for prefix in ("single/", "mirrored/"))


def strategy(kind: str, replicas: int):
    """`replicas` logical CPUs, then MirroredStrategy over them ('mirrored') or the
    project's `distribute.make_strategy(kind)` (the default strategy for 'default')."""
    logical_cpus(replicas)
    return _make_strategy(kind, replicas)


def logical_cpus(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices (before TensorFlow's runtime starts)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def _make_strategy(kind: str, replicas: int):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    from clid_tf.core import distribute  # pylint: disable=import-outside-toplevel
    return distribute.make_strategy(kind)


def script_arguments(description: str):
    """The arguments every distributed_steps script takes (OUT.npz, --strategy,
    --replicas): a parser the script adds its own to."""
    import argparse  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out")
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--replicas", type=int, default=1)
    return parser


def save_states(args, steps) -> None:
    """Runs `steps(strategy, args) -> {name: array}` under the script's --strategy, Keras in
    float64 (what the comparisons to 1e-9 need), the global seeds set before each run, and
    saves OUT.npz; --strategy=compare runs it on one device and then on MirroredStrategy
    over --replicas logical CPUs, saved as single/NAME and mirrored/NAME."""
    import keras  # pylint: disable=import-outside-toplevel
    if args.strategy == "compare":
        logical_cpus(args.replicas)
        runs = {"single/": _make_strategy("default", args.replicas),
                "mirrored/": _make_strategy("mirrored", args.replicas)}
    else:
        runs = {"": strategy(args.strategy, args.replicas)}
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    state = {}
    for prefix, chosen in runs.items():
        keras.utils.set_random_seed(0)
        state.update({prefix + name: value for name, value in steps(chosen, args).items()})
    np.savez(args.out, **state)


def synchronize_batch_norm(model) -> None:
    """Batch statistics over the global batch (equal to one device's)."""
    import keras  # pylint: disable=import-outside-toplevel
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True

