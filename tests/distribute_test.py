"""Mirrored (2 logical CPUs) and multi-worker (2 local processes) steps equal 1 device."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "distributed_steps.py")


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, **extra}


def _run(out, *args, env=None):
    proc = subprocess.run([sys.executable, SCRIPT, str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env or _env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def _assert_same_state(a, b):
    assert set(a.files) == set(b.files)
    assert len(a["meta_losses"]) == 3
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("mode", [["--meta_grad=tape"], ["--meta_scope=last_layer"]])
def test_mirrored_two_replicas_match_one_device(tmp_path, mode):
    single = _run(tmp_path / "single.npz", "--strategy=default", *mode)
    mirrored = _run(tmp_path / "mirrored.npz", "--strategy=mirrored", "--replicas=2", *mode)
    _assert_same_state(single, mirrored)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_match_one_device(tmp_path):
    single = _run(tmp_path / "single.npz", "--strategy=default")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, SCRIPT, str(tmp_path / f"worker{index}.npz"),
             "--strategy=multi_worker"], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_env(TF_CONFIG=json.dumps(config))))
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    for index in range(2):
        _assert_same_state(single, np.load(tmp_path / f"worker{index}.npz"))
