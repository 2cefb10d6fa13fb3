"""Per-epoch schedules against PyTorch's closed forms."""

import math

import numpy as np
import pytest

from clid_tf.core import schedules


def _torch_cosine(epoch, base, t_max, eta_min):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


@pytest.mark.parametrize("periodic", [True, False])
def test_cosine_is_stepped_per_epoch_and_periodic_past_t_max(periodic):
    kind = "cosine_periodic" if periodic else "cosine"
    schedule = schedules.build(kind, 0.05, steps_per_epoch=7, epochs=30, t_max=5, eta_min=1e-3)
    for step in range(0, 7 * 30, 3):
        epoch = step // 7
        want = _torch_cosine(epoch if periodic else min(epoch, 5), 0.05, 5, 1e-3)
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5)
    # PyTorch's CosineAnnealingLR comes back to the base lr after 2 * T_max epochs.
    assert float(schedule(7 * 10)) == pytest.approx(0.05 if periodic else 1e-3, rel=1e-5)


def test_cosine_t_max_defaults_to_the_number_of_epochs():
    schedule = schedules.build("cosine", 0.1, steps_per_epoch=2, epochs=8, eta_min=0.0)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(2 * 4)) == pytest.approx(0.05, rel=1e-5)
    assert float(schedule(2 * 8)) == pytest.approx(0.0, abs=1e-7)


def test_multistep_multiplies_at_each_milestone():
    schedule = schedules.build("multistep", 0.02, steps_per_epoch=10, epochs=300,
                               milestones=[80, 120], gamma=0.1)
    for epoch, want in [(0, 0.02), (79, 0.02), (80, 0.002), (119, 0.002), (120, 0.0002)]:
        assert float(schedule(epoch * 10 + 9)) == pytest.approx(want, rel=1e-5)


def test_constant_and_unknown():
    assert schedules.build("constant", 0.3, steps_per_epoch=1, epochs=1) == 0.3
    with pytest.raises(ValueError, match="unknown"):
        schedules.build("linear", 0.3, steps_per_epoch=1, epochs=1)
