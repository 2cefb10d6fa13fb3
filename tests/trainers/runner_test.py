"""The runner's label-free selections: one per network the plan predicts with, on the sets
the plan names (or the run's selection set), at the CLID temperature --tau."""

import types

import keras
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.cli import checks
from clid_tf.data import pipelines
from clid_tf.data.inputs import ArrayInputs
from clid_tf.trainers import runner

FLAGS = flags.FLAGS


def _net():
    inputs = keras.Input((4,))
    features = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, (keras.layers.Dense(3)(features), features))


def _selections(tmp_path, *args, meta_sets=None, networks=2):
    cli.define_flags()
    FLAGS.unparse_flags()
    FLAGS(["x", *args])
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    setup = types.SimpleNamespace(dataset=types.SimpleNamespace(test=None),
                                  meta_inputs=lambda: ArrayInputs(x),
                                  selection_indices=np.arange(10, 30))
    nets = [_net() for _ in range(networks)]
    plan = runner.Plan(types.SimpleNamespace(predicting=lambda: nets), stream=None,
                       meta_sets=meta_sets, selection_augment=None, eligible_from=3)
    folder = types.SimpleNamespace(selected_weights=str(tmp_path))
    return runner.selections_of(checks.resolved(), setup, folder, plan), nets, x


def test_one_selection_per_network_of_the_plan(tmp_path):
    with flagsaver.flagsaver():
        chosen, nets, _ = _selections(tmp_path, "--tau=0.7", "--meta_batch_size=8")
    assert [s.prefix for s in chosen] == ["net1_", "net2_"]
    assert [s.backbone for s in chosen] == nets
    assert {(s.tau, s.batch_size, s.eligible_from) for s in chosen} == {(0.7, 8, 3)}
    assert all(list(s.meta.ids()) == list(range(10, 30)) for s in chosen)


def test_a_plans_own_meta_sets_and_one_network_without_a_prefix(tmp_path):
    x = np.zeros((6, 4), np.float32)
    own = [pipelines.Part(ArrayInputs(x), np.arange(6))]
    with flagsaver.flagsaver():
        chosen, _, _ = _selections(tmp_path, meta_sets=own, networks=1)
    assert len(chosen) == 1 and chosen[0].prefix == "" and chosen[0].meta is own[0]
    assert chosen[0].batch_size == 6  # the meta batch, capped by the set's size
    assert chosen[0].tau == pytest.approx(0.5)

