"""FlexMatch + CLID steps under MirroredStrategy on 2 logical CPUs equal one device: the
backbone, its EMA network, the loss-net, the meta loss and FlexMatch's table."""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "fixmatch_distributed_steps.py")


def _run(out, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, SCRIPT, str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def test_mirrored_two_replicas_match_one_device(tmp_path):
    single = _run(tmp_path / "single.npz", "--algorithm=flexmatch")
    mirrored = _run(tmp_path / "mirrored.npz", "--algorithm=flexmatch", "--strategy=mirrored",
                    "--replicas=2")
    assert set(single.files) == set(mirrored.files)
    assert len(single["meta_losses"]) == 3 and (single["selected_label"] >= 0).any()
    for key in single.files:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
