"""DivideMix + VRI + CLID steps on 2 logical CPUs (MirroredStrategy) equal one device: the
mixup draw, its permutation over all global rows and VRI's eps are drawn for the global
batch, and every loss term is this replica's share of the global one."""

import os

import numpy as np
import pytest

from tests.helpers import replicas as replica_steps

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")


def _run(out, *args):
    return replica_steps.run(SCRIPT, out, *args)


@pytest.mark.parametrize("meta_grad", ["recompute"])
def test_mirrored_two_replicas_match_one_device(tmp_path, meta_grad):
    single = _run(tmp_path / "single.npz", f"--meta_grad={meta_grad}")
    mirrored = _run(tmp_path / "mirrored.npz", "--strategy=mirrored", "--replicas=2",
                    f"--meta_grad={meta_grad}")
    assert set(single.files) == set(mirrored.files)
    assert single["dividemix_logs"].shape == (3, 10)  # 10 metrics of 3 steps
    assert np.isfinite(single["dividemix_logs"]).all()
    for key in single.files:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
