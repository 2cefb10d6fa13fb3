"""The parts every trainer builds from the flags, per trainer: the meta optimizer, the
augmentation of label-free selection, the semi-supervised strong view."""

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.cli import checks
from clid_tf.data.sources.digits import load_digits
from clid_tf.trainers import parts
from clid_tf.trainers.fixmatch import cli as fixmatch_cli

FLAGS = flags.FLAGS


def _flags(*args):
    cli.define_flags()
    FLAGS.unparse_flags()
    FLAGS(["x", *args])
    return checks.resolved()


@pytest.mark.parametrize("trainer", ["meta", "vri_single", "dividemix", "fixmatch"])
def test_every_meta_optimizer_is_adam_with_pytorchs_epsilon(trainer):
    with flagsaver.flagsaver():
        extra = ["--num_labels=200"] if trainer == "fixmatch" else []
        f = _flags(f"--trainer={trainer}", *extra)
        optimizer = parts.meta_optimizer(f, nesterov=trainer == "fixmatch")
        assert optimizer.__class__.__name__ == "Adam"
        assert optimizer.epsilon == pytest.approx(1e-8)
        assert parts.classifier_optimizer(_flags(f"--trainer={trainer}", "--optimizer=adam"),
                                          10).epsilon == pytest.approx(1e-8)


@pytest.mark.parametrize("trainer, augment, expected", [
    ("meta", "none", "none"), ("meta", "strong", "none"), ("vri_single", "weak", "none"),
    ("dividemix", "none", "none"), ("dividemix", "weak", "weak"),
    # the authors' meta loader: crop + flip, no RandAugment
    # (ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py:371-392)
    ("dividemix", "strong", "weak"),
    ("fixmatch", "none", "weak")])
def test_the_selection_augmentation_of_each_trainer(trainer, augment, expected):
    with flagsaver.flagsaver():
        extra = ["--num_labels=200"] if trainer == "fixmatch" else []
        f = _flags(f"--trainer={trainer}", f"--augment={augment}", *extra)
        assert f.select_augment == expected
        given = _flags(f"--trainer={trainer}", f"--augment={augment}", "--select_augment=strong",
                       *extra)
        assert given.select_augment == "strong"


def test_the_semi_supervised_strong_view_is_usb_randaugment_by_default():
    """The strong view of fixmatch/flexmatch is USB's RandAugment(3, 5) without Cutout
    (ruofanhu/CLID-MU@5cd0608, semi/semilearn/datasets/augmentation/randaugment.py):
    no grey Cutout square, and it equals `augment.build('randaugment')` image by image;
    --ssl_strong_augment=strong is FixMatch's RandAugmentMC + Cutout."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf.data import augment  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    images = tf.constant(digits.train.inputs.array[:16].astype(np.float32))
    seed = tf.constant([1, 2], tf.int64)
    for value, kind in (("randaugment", "randaugment"), ("strong", "strong")):
        with flagsaver.flagsaver():
            f = _flags("--trainer=fixmatch", "--num_labels=200", f"--ssl_strong_augment={value}")
            _, strong = fixmatch_cli.views(f, digits)
            expected = augment.build(kind, image_shape=(8, 8, 1), seed=f.seed,
                                     flip=f.augment_flip, pad=1)
            np.testing.assert_array_equal(strong(images, stateless_seed=seed),
                                          expected(images, stateless_seed=seed))
