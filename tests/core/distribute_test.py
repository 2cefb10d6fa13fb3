"""Mirrored (2 logical CPUs) and multi-worker (2 local processes) steps equal 1 device,
for WNet and for VRI (whose eps each replica takes from a global-batch draw), and for
vri_single's configuration (VRI, the real Adam's virtual step, dropout masks drawn for the
global batch)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import replicas as replica_steps

ROOT = replica_steps.ROOT
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")
_env = replica_steps.env


def _run(out, *args, env=None):
    return replica_steps.run(SCRIPT, out, *args, env_vars=env)


def _assert_same_state(a, b):
    assert set(a) == set(b) and len(a) > 3
    assert len(a["meta_losses"]) == 3
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12, err_msg=key)


# Slow (deselected by default): the tape route, the last-layer scope and plain VRI. The
# default run keeps the default route (recompute), the optimizer-copy step with meta_every,
# and VRI with Adam's copy and dropout (VRI's global-batch eps draw on two replicas); the
# tape route's equality with recompute and the last-layer hypergradient are checked on one
# device (core/virtual_test.py), and a scope changes which variables the same replicated
# step differentiates, not how replicas combine.
@pytest.mark.parametrize("mode", [
    pytest.param(["--meta_grad=tape"], marks=pytest.mark.slow), ["--meta_grad=recompute"],
    pytest.param(["--meta_scope=last_layer"], marks=pytest.mark.slow),
    pytest.param(["--meta_net=vri"], marks=pytest.mark.slow),
    ["--virtual_step=optimizer", "--meta_every=2"],
    ["--meta_net=vri", "--virtual_step=optimizer", "--optimizer=adam", "--dropout"]])
def test_mirrored_two_replicas_match_one_device(tmp_path, mode):
    single, mirrored = replica_steps.compare(SCRIPT, tmp_path / "both.npz", *mode)
    _assert_same_state(single, mirrored)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# VRI on two workers is slow (deselected by default): its per-replica eps draw is checked
# on two Mirrored replicas above, the multi-worker wiring by the WNet run.
@pytest.mark.parametrize("meta_net", ["wnet", pytest.param("vri", marks=pytest.mark.slow)])
def test_multi_worker_two_processes_match_one_device(tmp_path, meta_net):
    single = _run(tmp_path / "single.npz", "--strategy=default", f"--meta_net={meta_net}")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, SCRIPT, str(tmp_path / f"worker{index}.npz"),
             "--strategy=multi_worker", f"--meta_net={meta_net}"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(TF_CONFIG=json.dumps(config))))
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    for index in range(2):
        with np.load(tmp_path / f"worker{index}.npz") as worker:
            _assert_same_state(dict(single), dict(worker))


SPREAD_SCRIPT = """
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from clid_tf.core import distribute
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

@tf.function
def step(overflow_on_replica_1):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    grads = [tf.fill([3], tf.cast(replica + 1, tf.float32)), tf.ones([2, 2])]
    bad = tf.logical_and(overflow_on_replica_1, tf.equal(replica, 1))
    grads[0] = tf.where(bad, float("inf"), grads[0])
    return distribute.spread_non_finite(grads)

out = {}
for flag in (False, True):
    results = strategy.run(step, args=(tf.constant(flag),))
    out[str(flag)] = [[r.numpy().ravel().tolist() for r in strategy.experimental_local_results(g)]
                      for g in results]
print(json.dumps(out))
"""


def test_an_overflow_on_one_replica_makes_every_replica_skip():
    """Under loss scaling each replica's LossScaleOptimizer decides on its own gradients;
    spread_non_finite makes them agree (one replica's Inf -> NaN on all)."""
    proc = subprocess.run([sys.executable, "-c", SPREAD_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["False"] == [[[1.0] * 3, [2.0] * 3], [[1.0] * 4, [1.0] * 4]]
    assert all(np.isnan(replica).all() for grad in out["True"] for replica in grad)


FLOAT16_MIRRORED_SCRIPT = """
import json, numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from clid_tf.models import backbones
from clid_tf.trainers.meta import model as meta_model
from clid_tf import metanets
from clid_tf.core import objectives
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    net = backbones.build("small_cnn", num_classes=3, input_shape=(8, 8, 1), mean=(0.3,),
                          std=(0.4,), seed=0, sync_batchnorm=True, dtype_policy="mixed_float16")
    meta_net = metanets.build("wnet", num_classes=3, feature_dim=net.feature_dim,
                                         vri_kl=0.0, seed=0)
    model = meta_model.MetaReweightModel(
        net, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    model.optimizer.dynamic_scale.assign(2.0**40)  # overflows until it has come down
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (16, 8, 8, 1)).astype(np.float32)
data = {"train": {"image": images, "label": rng.integers(0, 3, 16).astype(np.int32)},
        "meta": {"image": images[:8]}}
history = model.fit(tf.data.Dataset.from_tensors(data).repeat(30), epochs=1, verbose=0)
print(json.dumps({"logs": {k: float(v[-1]) for k, v in history.history.items()},
                  "steps": int(model.optimizer.iterations.numpy()),
                  "meta_steps": int(model.meta_optimizer.iterations.numpy())}))
"""


@pytest.mark.slow  # the agreement itself: test_an_overflow_on_one_replica_makes_every_replica_skip
def test_float16_mirrored_training_skips_overflows_on_every_replica_alike():
    proc = subprocess.run([sys.executable, "-c", FLOAT16_MIRRORED_SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    logs = out["logs"]
    assert 0 < out["steps"] < 30 and out["meta_steps"] == out["steps"]
    assert logs["loss_scale"] < 2.0**40             # halved on each overflow ...
    assert logs["meta_loss_scale"] == 2.0**15       # ... which was not the meta scale's
    assert np.isfinite(logs["meta_clid"]) and np.isfinite(logs["loss"])
