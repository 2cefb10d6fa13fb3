"""FlexMatch + CLID steps under MirroredStrategy on 2 logical CPUs equal one device: the
backbone, its EMA network, the loss-net, the meta loss and FlexMatch's table."""

import os

import numpy as np

from tests.helpers import replicas as replica_steps

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")


def test_mirrored_two_replicas_match_one_device(tmp_path):
    single, mirrored = replica_steps.compare(SCRIPT, tmp_path / "both.npz",
                                             "--algorithm=flexmatch")
    assert set(single) == set(mirrored) and len(single) > 3
    assert len(single["meta_losses"]) == 3 and (single["selected_label"] >= 0).any()
    for key in single:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
