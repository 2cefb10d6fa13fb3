"""Every Keras input a user's model takes: text, token ids, several named or listed inputs,
Datasets of such structures, PyDatasets and generators, subclassed models returning
(logits, features). Each trains, predicts, saves and loads, exports, selects and audits,
or is refused in one line that says why."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import bench_your_data
import clid_tf
from clid_tf.data import examples
from clid_tf.runs import export

K_TABULAR = 4


def compiled(net, meta_net=None):
    model = clid_tf.MetaReweightModel(net, meta_net or clid_tf.WeightNet())
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    return model


@pytest.fixture(scope="module")
def reviews():
    texts, noisy, clean = examples.noisy_reviews(480, seed=0)
    return texts, noisy, clean


@pytest.fixture(scope="module")
def table():
    return examples.noisy_tabular(480, seed=0)


def test_the_example_datasets_are_noisy_as_documented():
    texts, noisy, clean = examples.noisy_reviews(4000, noise_rate=0.4, seed=1)
    assert texts.dtype == object and isinstance(texts[0], str)
    assert abs(np.mean(noisy != clean) - 0.4) < 0.03
    assert np.all(np.abs(noisy - clean) <= 1)  # only to a neighbouring sentiment
    x, noisy, clean = examples.noisy_tabular(4000, noise_rate=0.4, seed=1)
    assert x["numbers"].shape == (4000, 6) and x["category"].dtype == np.int64
    assert abs(np.mean(noisy != clean) - 0.4) < 0.03


@pytest.mark.parametrize("meta_net", ["wnet", "vri"])
def test_a_text_model_with_text_vectorization_trains_on_raw_strings(reviews, meta_net):
    """The Keras text-classification recipe: raw strings in, TextVectorization inside the
    model; the meta set is drawn from the user's texts, CLID scores it."""
    texts, noisy, clean = reviews
    model = compiled(bench_your_data.review_model(texts),
                     clid_tf.WeightNet() if meta_net == "wnet" else clid_tf.VRINet())
    before = model.predict(texts[:8].astype(object), verbose=0)
    history = model.fit(np.array(list(texts), dtype=str), noisy, batch_size=32, epochs=4,
                        meta_size=100, meta_batch_size=50, verbose=0,
                        callbacks=[clid_tf.ClidSelection()])
    assert np.isfinite(history.history["meta_clid"]).all()
    assert len(history.history["meta_set_clid"]) == 4
    after = model.predict(texts[:8], verbose=0)
    assert not np.allclose(before, after)
    assert model.meta_set.inputs.dtype == "string" and len(model.meta_set) == 100


def test_a_text_model_saves_loads_and_serves_strings(reviews, tmp_path):
    texts, noisy, _ = reviews
    model = compiled(bench_your_data.review_model(texts))
    model.fit(texts, noisy, batch_size=32, epochs=2, meta_size=64, verbose=0)
    expected = model.predict(texts[:6], verbose=0)
    model.save(tmp_path / "reviews.keras")
    loaded = keras.models.load_model(tmp_path / "reviews.keras")
    np.testing.assert_allclose(loaded.predict(texts[:6], verbose=0), expected, atol=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clid_tf.export_saved_model(model, tmp_path / "served")
    said = [str(w.message) for w in caught if "serving_bytes" in str(w.message)]
    assert said == [f"{tmp_path / 'served'}: no serving_bytes endpoint, as the model takes "
                    "text, not one image"]
    assert export.describe_signature(tmp_path / "served").startswith(
        "serving_default: images string [batch] ->")
    served = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    out = served(images=tf.constant(list(texts[:6])))
    np.testing.assert_array_equal(out["class_ids"].numpy(), expected.argmax(-1))


def test_token_ids_through_an_embedding_take_the_default_meta_step():
    """Integer ids stay integers; the embedding's sparse gradient passes the virtual step
    (densified) and its rows move as plain Keras moves them."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    ids = (rng.integers(0, 10, (600, 6)) + 10 * labels[:, None]).astype(np.int32)
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 8)(tokens))
    net = keras.Model(tokens, keras.layers.Dense(3)(keras.layers.Dense(16, "relu")(hidden)))
    table_before = np.array(net.layers[1].embeddings)
    model = compiled(net)
    assert model.meta_grad == "recompute"
    model.fit(ids, labels, batch_size=30, epochs=4, meta_size=60, verbose=0)
    assert model.input_profile.dtype == "int32"
    assert not np.allclose(np.array(net.layers[1].embeddings), table_before)
    assert model.evaluate(ids, labels, verbose=0, return_dict=True)["accuracy"] > 0.9


@pytest.mark.parametrize("form", ["dict", "list"])
def test_a_model_of_several_inputs_takes_a_dict_or_a_list(table, form, tmp_path):
    x, noisy, clean = table
    net = bench_your_data.tabular_model()
    if form == "list":  # the same layers called on a list of inputs
        net = keras.Model([net.input["numbers"], net.input["category"]], net.output)
        x = [x["numbers"], x["category"]]
    model = compiled(net)
    history = model.fit(x, noisy, batch_size=32, epochs=3, meta_size=100, verbose=0,
                        validation_split=0.25, callbacks=[clid_tf.ClidSelection()])
    assert len(history.history["val_accuracy"]) == 3
    assert model.input_profile.several
    part = {k: v[:5] for k, v in x.items()} if form == "dict" else [v[:5] for v in x]
    expected = model.predict(part, verbose=0)
    profile = type(model.input_profile).from_config(
        json.loads(json.dumps(model.input_profile.to_config())))
    assert profile == model.input_profile
    model.save(tmp_path / "table.keras")
    reloaded = keras.models.load_model(tmp_path / "table.keras")
    np.testing.assert_allclose(reloaded.predict(part, verbose=0), expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clid_tf.export_saved_model(model, tmp_path / "served")
    names = ({"category": "category", "numbers": "numbers"} if form == "dict"
             else {"numbers": "input_0", "category": "input_1"})
    assert export.describe_signature(tmp_path / "served").startswith(
        f"serving_default: {names['category'] if form == 'dict' else 'input_0'}")
    served = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    columns = dict(zip(["numbers", "category"], [part["numbers"], part["category"]] if
                       form == "dict" else part))
    out = served(**{names[key]: tf.constant(value) for key, value in columns.items()})
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               tf.nn.softmax(expected).numpy(), atol=1e-5)


def test_a_dataset_of_dict_inputs_labels_and_weights(table):
    x, noisy, _ = table
    weights = np.where(np.arange(len(noisy)) % 2 == 0, 1.0, 0.0).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, noisy, weights)).batch(40)
    model = compiled(bench_your_data.tabular_model())
    history = model.fit(data, epochs=2, meta_size=80, meta_batch_size=40, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert sorted(model.input_profile.shape) == ["category", "numbers"]
    assert model.input_profile.shape["numbers"] == (6,)


def test_a_py_dataset_makes_keras_epochs_and_a_generator_is_read_once(table):
    x, noisy, _ = table

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 12  # 480 / 40

        def __getitem__(self, i):
            rows = slice(40 * i, 40 * (i + 1))
            return {key: value[rows] for key, value in x.items()}, noisy[rows]

    seen = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.params.get("steps"))

    model = compiled(bench_your_data.tabular_model())
    model.fit(Batches(), epochs=2, meta_size=80, meta_batch_size=40, verbose=0,
              callbacks=[Count()])
    assert seen == [12, 12]

    yielded = []

    def generator():
        for i in range(12):
            yielded.append(i)
            rows = slice(40 * i, 40 * (i + 1))
            yield {key: value[rows] for key, value in x.items()}, noisy[rows]

    model = compiled(bench_your_data.tabular_model())
    model.fit(generator(), epochs=1, meta_size=80, meta_batch_size=40, verbose=0)
    assert yielded == list(range(12))  # every batch once, the first one too


def test_a_subclassed_model_returning_logits_and_features():
    x, noisy, _ = examples.noisy_tabular(240, seed=1)
    numbers = x["numbers"]

    class PairNet(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.body = keras.layers.Dense(16, activation="relu")
            self.out = keras.layers.Dense(K_TABULAR)

        def call(self, inputs, training=False):
            features = self.body(inputs)
            return self.out(features), features

    with pytest.raises(ValueError, match="never called: call it once on a batch"):
        compiled(PairNet())
    net = PairNet()
    net(numbers[:2])
    model = compiled(net)
    model.fit(numbers, noisy, batch_size=40, epochs=2, meta_size=80, verbose=0)
    assert model.predict(numbers[:3], verbose=0).shape == (3, K_TABULAR)


def test_find_label_issues_on_several_inputs(table):
    x, noisy, clean = table

    def build():
        return compiled(bench_your_data.tabular_model())

    found = clid_tf.find_label_issues(build, x, noisy, folds=2, epochs=4, batch_size=32,
                                      verbose=False, clean_labels=clean)
    flagged_wrong = np.mean(noisy[found.issues] != clean[found.issues])
    assert len(found.issues) > 20 and flagged_wrong > 2 * np.mean(noisy != clean) * 0.8


@pytest.mark.parametrize("trainer", ["dividemix", "fixmatch"])
def test_the_image_trainers_refuse_text_and_several_inputs_in_one_line(reviews, table,
                                                                        trainer):
    texts, noisy, _ = reviews
    x, labels, _ = table
    for inputs, targets, said in ((texts, noisy, "not text"), (x, labels, "one image array")):
        if trainer == "dividemix":
            model = clid_tf.DivideMixModel([keras.Sequential([keras.Input((6,)),
                                                              keras.layers.Dense(K_TABULAR)])
                                            for _ in range(2)])
            model.compile([keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)])
            run = lambda: model.fit(inputs, targets, epochs=1, verbose=0)  # noqa: E731
        else:
            model = clid_tf.FixMatchModel(keras.Sequential([keras.Input((6,)),
                                                           keras.layers.Dense(K_TABULAR)]))
            model.compile(keras.optimizers.SGD(0.1))
            run = lambda: model.fit(inputs, targets, unlabeled=inputs,  # noqa: E731
                                    epochs=1, verbose=0)
        with pytest.raises(ValueError, match=said) as refused:
            run()
        assert "\n" not in str(refused.value)
