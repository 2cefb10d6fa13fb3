"""FlexMatch + CLID steps under MirroredStrategy on 2 logical CPUs equal one device: the
backbone, its EMA network, the loss-net, the meta loss and FlexMatch's table."""

import numpy as np

from tests import replica_steps


def _run(out, *args):
    return replica_steps.run("fixmatch_distributed_steps.py", out, *args)


def test_mirrored_two_replicas_match_one_device(tmp_path):
    single = _run(tmp_path / "single.npz", "--algorithm=flexmatch")
    mirrored = _run(tmp_path / "mirrored.npz", "--algorithm=flexmatch", "--strategy=mirrored",
                    "--replicas=2")
    assert set(single.files) == set(mirrored.files)
    assert len(single["meta_losses"]) == 3 and (single["selected_label"] >= 0).any()
    for key in single.files:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
