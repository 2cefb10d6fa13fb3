"""A maintainer's extensions are one module and one registration each: a toy meta-net and a
toy dataset source, both defined and registered here, train through the command line's own
entry point (`cli.run`, with `--meta_net=toy --dataset=toy:...`) and through the Python API,
with nothing else of the package changed."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import clid_tf
from clid_tf import cli
from clid_tf import metanets
from clid_tf import trainers
from clid_tf.core import objectives
from clid_tf.data import datasets
from clid_tf.data import sources
from clid_tf.data.inputs import ArrayInputs
from clid_tf.errors import DataError

FLAGS = flags.FLAGS


class ToyMetaNet(keras.Model):
    """A meta-net that weights each sample by a learned function of its logit margin:
    w = sigmoid(a * margin + b), two parameters, normalised over the batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = self.add_weight(shape=(), initializer="zeros", name="a")
        self.b = self.add_weight(shape=(), initializer="zeros", name="b")
        self.built = True

    def _weights_of(self, logits, labels):
        top2 = tf.math.top_k(tf.stop_gradient(logits), k=2).values
        given = tf.gather(tf.stop_gradient(logits), tf.cast(labels, tf.int32), batch_dims=1)
        margin = given - top2[:, 1]
        return tf.sigmoid(self.a * margin + self.b)

    def weighted_loss(self, logits, features, labels, *, regularize=True):
        del features, regularize
        losses = objectives.per_sample_ce(logits, labels)
        weights = self._weights_of(logits, labels)
        return objectives.WeightedLoss(objectives.weighted_mean(losses, weights), weights,
                                       tf.zeros([], losses.dtype))

    def label_weights(self, logits, features, labels):
        del features
        return self._weights_of(logits, labels)


class ToySource:
    """'toy:N': N random 8x8 grey images of two classes told apart by their mean brightness,
    a test split of 40; the labels are the user's (`labels_given`)."""

    name = "toy"
    prefixed = True
    options = frozenset()
    human_labels = ()
    example = "toy:200"

    def load(self, argument, **options):
        del options
        n = int(argument)
        rng = np.random.default_rng(0)

        def split(size):
            labels = rng.integers(0, 2, size)
            images = rng.integers(0, 128, (size, 8, 8, 1)) + 100 * labels[:, None, None, None]
            return datasets.Split(ArrayInputs(images.astype(np.uint8)), labels.astype(np.int64))

        train = split(n)
        mean, std = datasets.array_stats(train.inputs.array)
        return datasets.Dataset(train=train, val=None, test=split(40), num_classes=2,
                                class_names=("dark", "bright"), mean=mean, std=std,
                                labels_given=True)

    def claims(self, path):
        return False


@pytest.fixture
def registered():
    metanets.register("toy", lambda **kwargs: ToyMetaNet())
    sources.register(ToySource())
    yield
    metanets.unregister("toy")
    sources.unregister("toy")


@pytest.mark.slow  # covered by tests/docs/extending_test.py: a meta-net and a source from outside train, resume and audit through the command line
def test_a_registered_meta_net_and_source_train_through_the_command_line(registered, tmp_path):
    cli.define_flags()
    workdir = tmp_path / "run"
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        cli.parse_flags(["x", "--dataset=toy:200", "--meta_net=toy", f"--workdir={workdir}",
                         "--epochs=3", "--warmup_epochs=1", "--meta_size=40",
                         "--meta_batch_size=20", "--batch_size=20", "--verbose=0",
                         "--export=none"])
        results = cli.run()
    saved = json.load(open(workdir / "results.json"))
    assert saved["meta_net"] == "toy" and saved["flags"]["dataset"] == "toy:200"
    assert saved["class_names"] == ["dark", "bright"]
    assert len(saved["history"]["meta_clid"]) == 3 and saved["history"]["meta_clid"][0] is None
    assert results["final_test_accuracy"] > 0.8  # brightness tells the classes apart
    # the toy net's two parameters were trained by the meta step (CLID through the step)
    reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if "meta_net" in n and "/a/" in n]
    assert names and reader.get_tensor(names[0]) != 0.0


def test_a_registered_meta_net_and_source_train_through_the_python_api(registered):
    data = sources.load("toy:160")
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255.0),
                                 keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(2)])
    model = clid_tf.MetaReweightModel(backbone, metanets.build("toy", num_classes=2,
                                                               feature_dim=16))
    model.compile(keras.optimizers.SGD(0.05), keras.optimizers.Adam(1e-2))
    history = model.fit(data.train.inputs.array, data.train.labels, batch_size=20, epochs=2,
                        meta_size=40, meta_batch_size=20, verbose=0).history
    assert np.isfinite(history["meta_clid"]).all()
    assert model.meta_net.a.numpy() != 0.0


def test_the_command_line_lists_what_is_registered(registered):
    assert "toy" in metanets.names() and "toy:..." in sources.names()
    assert set(trainers.names()) >= {"meta", "vri_single", "dividemix", "fixmatch",
                                     "flexmatch"}
    with pytest.raises(ValueError, match="unknown meta-net 'nope'"):
        metanets.build("nope", num_classes=2, feature_dim=3)
    with pytest.raises(DataError, match="unknown dataset 'nope:1'"):
        sources.load("nope:1")
