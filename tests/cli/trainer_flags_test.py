"""Flags belong to the trainers that read them: a flag the chosen trainer does not read is
refused (at its default it changes nothing and passes), a trainer's default applies to any
flag it reads until the flag is given, and a run's flags.cfg records the values its
trainer read, only those."""

import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf import trainers
from clid_tf.cli import checks
from clid_tf.cli import commands
from clid_tf.errors import RunError

FLAGS = flags.FLAGS


def resolved(*args):
    cli.define_flags()
    FLAGS.unparse_flags()
    cli.parse_flags(["x", *args])
    return checks.resolved(FLAGS)


@pytest.fixture
def toy_trainer():
    """A trainer of no meta-net, with a flag of its own and its own default for --epochs
    (a flag whose default is not None)."""
    def define():
        flags.DEFINE_integer("toy_rounds", 2, "Toy: rounds per epoch.", lower_bound=1)

    trainers.register(trainers.Trainer(
        name="toy", summary="a toy", adapter="nowhere", reads=("toy_rounds",),
        define_flags=define, defaults={"epochs": 7}))
    cli.define_flags()
    yield
    trainers.unregister("toy")


def test_another_trainers_flag_is_refused_unless_at_its_default():
    with flagsaver.flagsaver():
        for args in (["--p_threshold=0.3"], ["--trainer=dividemix", "--meta_every=2"],
                     ["--trainer=fixmatch", "--num_labels=200", "--nothresh_warmup"]):
            with pytest.raises(RunError, match="is read by --trainer="):
                checks.check(resolved(*args))
        checks.check(resolved("--p_threshold=0.5", "--uratio=7"))  # the defaults: as unset
        checks.check(resolved("--trainer=flexmatch", "--num_labels=200", "--nothresh_warmup"))


def test_a_trainers_default_holds_for_any_flag_until_the_flag_is_given(toy_trainer):
    with flagsaver.flagsaver():
        toy = resolved("--trainer=toy")
        assert (toy.epochs, toy.toy_rounds) == (7, 2)
        assert resolved("--trainer=toy", "--epochs=30").epochs == 30  # given at the default
        assert resolved("--trainer=meta").epochs == 30
        with pytest.raises(RunError, match="--toy_rounds is read by --trainer=toy only"):
            checks.check(resolved("--toy_rounds=3"))
        with pytest.raises(RunError, match="--meta_net is read by --trainer=meta|vri_single"):
            checks.check(resolved("--trainer=toy", "--meta_net=vri"))
        assert "--epochs=7\n" in commands.training_flags_text(resolved("--trainer=toy"))


def test_flags_cfg_holds_the_values_the_trainer_read_and_only_its_flags():
    with flagsaver.flagsaver():
        text = commands.training_flags_text(resolved("--trainer=dividemix"))
        lines = text.splitlines()
        assert "--meta_net=vri" in lines and "--lambda_u=150.0" in lines
        assert "--select_augment=none" in lines  # its rule: none without --augment
        assert "--p_threshold=0.5" in lines
        assert not [l for l in lines if l.startswith(("--vri_kl", "--uratio", "--num_labels",
                                                      "--optimizer="))]
        meta = commands.training_flags_text(resolved()).splitlines()
        assert "--meta_net=wnet" in meta and not [l for l in meta if "p_threshold" in l]
        # given back as a flagfile, it runs the same trainer with the same values
        FLAGS.unparse_flags()
        again = resolved(*lines)
        assert commands.training_flags_text(again) == text
