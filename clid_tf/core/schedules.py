"""Per-epoch learning-rate schedules, stepped like PyTorch's epoch-level schedulers.

`start_epoch` S holds the base lr for the first S epochs and runs the schedule from
there (schedule epoch = run epoch - S): the authors' Animal-10N script steps its cosine only
after its warm-up epochs (ruofanhu/CLID-MU@5cd0608, sota/Train_animal_vri.py:512-514).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf


class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """CosineAnnealingLR(T_max, eta_min) evaluated at epoch = floor(step / steps_per_epoch).

    periodic=True follows the cosine past T_max (period 2 * T_max), as PyTorch does when a
    run is longer than T_max; periodic=False holds eta_min after T_max.
    """

    def __init__(self, base_lr: float, *, t_max: int, eta_min: float, steps_per_epoch: int,
                 periodic: bool = True, start_epoch: int = 0):
        self.base_lr = float(base_lr)
        self.t_max = int(t_max)
        self.eta_min = float(eta_min)
        self.steps_per_epoch = int(steps_per_epoch)
        self.periodic = bool(periodic)
        self.start_epoch = int(start_epoch)

    def __call__(self, step):
        epoch = tf.cast(_epoch(step, self.steps_per_epoch, self.start_epoch), tf.float32)
        if not self.periodic:
            epoch = tf.minimum(epoch, float(self.t_max))
        cosine = (1.0 + tf.cos(math.pi * epoch / self.t_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine

    def get_config(self):
        return {"base_lr": self.base_lr, "t_max": self.t_max, "eta_min": self.eta_min,
                "steps_per_epoch": self.steps_per_epoch, "periodic": self.periodic,
                "start_epoch": self.start_epoch}


class EpochMultiStep(keras.optimizers.schedules.LearningRateSchedule):
    """MultiStepLR: base_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, base_lr: float, *, milestones: Sequence[int], gamma: float,
                 steps_per_epoch: int, start_epoch: int = 0):
        self.base_lr = float(base_lr)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.steps_per_epoch = int(steps_per_epoch)
        self.start_epoch = int(start_epoch)

    def __call__(self, step):
        epoch = _epoch(step, self.steps_per_epoch, self.start_epoch)
        passed = tf.reduce_sum(tf.cast(
            epoch >= tf.constant(self.milestones or [0], tf.int64), tf.float32))
        if not self.milestones:
            passed = 0.0
        return self.base_lr * tf.pow(self.gamma, passed)

    def get_config(self):
        return {"base_lr": self.base_lr, "milestones": self.milestones, "gamma": self.gamma,
                "steps_per_epoch": self.steps_per_epoch, "start_epoch": self.start_epoch}


def _epoch(step, steps_per_epoch: int, start_epoch: int):
    """int64: the schedule's epoch of a step, max(floor(step / steps) - start, 0)."""
    epoch = tf.math.floordiv(tf.cast(step, tf.int64), steps_per_epoch)
    return tf.maximum(epoch - start_epoch, 0)


def build(kind: str, base_lr: float, *, steps_per_epoch: int, epochs: int, t_max: int = 0,
          eta_min: float = 1e-3, milestones: Sequence[int] = (), gamma: float = 0.1,
          start_epoch: int = 0):
    """'cosine' (single, T_max = t_max or the epochs after start_epoch), 'cosine_periodic',
    'multistep', 'constant'; the schedule starts at run epoch `start_epoch`."""
    if kind in ("cosine", "cosine_periodic"):
        return EpochCosine(base_lr, t_max=t_max or max(epochs - start_epoch, 1),
                           eta_min=eta_min, steps_per_epoch=steps_per_epoch,
                           periodic=kind == "cosine_periodic", start_epoch=start_epoch)
    if kind == "multistep":
        return EpochMultiStep(base_lr, milestones=milestones, gamma=gamma,
                              steps_per_epoch=steps_per_epoch, start_epoch=start_epoch)
    if kind == "constant":
        return base_lr
    raise ValueError(f"unknown lr schedule {kind!r}")
