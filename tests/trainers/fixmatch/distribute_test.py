"""FlexMatch + CLID steps under MirroredStrategy on 2 logical CPUs equal one device: the
backbone, its EMA network, the loss-net, the meta loss and FlexMatch's table."""

import os

import numpy as np

from tests.helpers import replicas as replica_steps

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_steps.py")


def _run(out, *args):
    return replica_steps.run(SCRIPT, out, *args)


def test_mirrored_two_replicas_match_one_device(tmp_path):
    single = _run(tmp_path / "single.npz", "--algorithm=flexmatch")
    mirrored = _run(tmp_path / "mirrored.npz", "--algorithm=flexmatch", "--strategy=mirrored",
                    "--replicas=2")
    assert set(single.files) == set(mirrored.files)
    assert len(single["meta_losses"]) == 3 and (single["selected_label"] >= 0).any()
    for key in single.files:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
