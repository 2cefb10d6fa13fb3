"""DivideMix + VRI + CLID steps on 2 logical CPUs (MirroredStrategy) equal one device: the
mixup draw, its permutation over all global rows and VRI's eps are drawn for the global
batch, and every loss term is this replica's share of the global one."""

import os

import numpy as np
import pytest

from tests.helpers import replicas as replica_steps

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")


@pytest.mark.parametrize("meta_grad", ["recompute"])
def test_mirrored_two_replicas_match_one_device(tmp_path, meta_grad):
    single, mirrored = replica_steps.compare(SCRIPT, tmp_path / "both.npz",
                                             f"--meta_grad={meta_grad}")
    assert set(single) == set(mirrored) and len(single) > 2
    assert single["dividemix_logs"].shape == (3, 10)  # 10 metrics of 3 steps
    assert np.isfinite(single["dividemix_logs"]).all()
    for key in single:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
