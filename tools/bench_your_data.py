"""The README's "your model, your data" examples, epoch by epoch: CLID-MU against plain Keras.

Two kinds of data Keras serves besides images, with noisy labels (`clid_tf.data.examples`):

  reviews  short texts, 3 sentiments, 40% of the labels moved to a neighbouring sentiment;
           TextVectorization inside the model, Embedding, mean pooling, a Dense head.
  tabular  a dict of two inputs (6 numeric columns, 1 categorical column through an
           Embedding), 4 classes, 40% symmetric noise.

Each seed trains the same model (same initial weights, same noisy labels, same optimizer:
SGD 0.05, momentum 0.9, batch 64) twice: `model.fit` of the plain Keras model, and
`clid_tf.MetaReweightModel(model, WeightNet())` with the CLID meta objective on a meta set
drawn from the training inputs (no labels), after a 2-epoch warm-up. Test labels are clean
and only reported: `validation_data` gives the per-epoch test accuracy of both, and
`clid_tf.ClidSelection` the label-free CLID-selected epoch of CLID-MU among its epochs after
the warm-up. Nothing here was
tuned on those test labels (the settings are the README's).

  python tools/bench_your_data.py --examples=reviews,tabular --seeds=0,1,2
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

import toolbox

FLAGS = flags.FLAGS
EXAMPLES = ("reviews", "tabular")


def define_flags() -> None:
    flags.DEFINE_list("examples", list(EXAMPLES), "Which examples: reviews, tabular.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data, noise and initial weights).")
    flags.DEFINE_integer("epochs", 15, "Epochs of each run.", lower_bound=3)
    flags.DEFINE_integer("warmup", 2, "Plain cross-entropy epochs before meta updates.",
                         lower_bound=0)
    flags.DEFINE_float("noise_rate", 0.4, "Share of training labels made wrong.")
    flags.DEFINE_integer("train_size", 3000, "Training samples.", lower_bound=200)
    flags.DEFINE_integer("test_size", 2000, "Test samples (clean labels).", lower_bound=100)


# ---------------------------------------------------------------- the users' models
def review_model(texts, seed: int = 0):
    """A Keras text classifier: raw strings in, 3 logits out (TextVectorization adapted
    on the training texts, inside the model)."""
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    vectorize = keras.layers.TextVectorization(max_tokens=200, output_sequence_length=16)
    vectorize.adapt(texts)
    text = keras.Input(shape=(), dtype="string", name="text")
    tokens = keras.layers.Embedding(200, 16, mask_zero=True)(vectorize(text))
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.GlobalAveragePooling1D()(tokens))
    return keras.Model(text, keras.layers.Dense(3)(hidden), name="reviews")


def tabular_model(seed: int = 0, num_classes: int = 4):
    """A Keras model of two named inputs: numbers float32 [6] and category int64 []."""
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    numbers = keras.Input(shape=(6,), name="numbers")
    category = keras.Input(shape=(), dtype="int64", name="category")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(2 * num_classes, 4)(category))
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([numbers, embedded]))
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    return keras.Model({"numbers": numbers, "category": category},
                       keras.layers.Dense(num_classes)(hidden), name="tabular")


def example(name: str, seed: int, train_size: int, test_size: int, noise_rate: float):
    """(build_model() -> a fresh model with the seed's initial weights, x, noisy y, test x,
    clean test y)."""
    from clid_tf.data import examples  # pylint: disable=import-outside-toplevel
    if name == "reviews":
        x, y, _ = examples.noisy_reviews(train_size, noise_rate=noise_rate, seed=seed)
        x_test, _, y_test = examples.noisy_reviews(test_size, seed=seed + 1000)
        return lambda: review_model(x, seed), x, y, x_test, y_test
    x, y, _ = examples.noisy_tabular(train_size + test_size, noise_rate=noise_rate, seed=seed)
    _, _, clean = examples.noisy_tabular(train_size + test_size, noise_rate=0.0, seed=seed)
    head, tail = slice(None, train_size), slice(train_size, None)
    return (lambda: tabular_model(seed), {k: v[head] for k, v in x.items()}, y[head],
            {k: v[tail] for k, v in x.items()}, clean[tail])


# ---------------------------------------------------------------- the two runs
def run_keras(build, x, y, x_test, y_test, epochs: int) -> tuple[list[float], float]:
    """(test accuracy of each epoch, seconds) of plain Keras on the noisy labels."""
    import keras  # pylint: disable=import-outside-toplevel
    model = build()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0,
                        validation_data=(x_test, y_test))
    return history.history["val_accuracy"], time.perf_counter() - start


def run_clid_mu(build, x, y, x_test, y_test, epochs: int, warmup: int, seed: int
                ) -> tuple[list[float], float, float]:
    """(test accuracy of each epoch, that of the CLID-selected epoch, seconds)."""
    import keras  # pylint: disable=import-outside-toplevel
    import clid_tf  # pylint: disable=import-outside-toplevel
    model = clid_tf.MetaReweightModel(build(), clid_tf.WeightNet(), meta_objective="clid")
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    selection = clid_tf.ClidSelection(test=(x_test, y_test), seed=seed,
                                      eligible_from=warmup + 1)  # meta epochs only
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, seed=seed,
                        validation_data=(x_test, y_test),
                        callbacks=[clid_tf.WarmUp(warmup), selection])
    seconds = time.perf_counter() - start
    return history.history["val_accuracy"], float(history.history["selected_accuracy"][-1]), \
        seconds


# ---------------------------------------------------------------- table
def table(name: str, keras_runs, clid_runs, epochs: int) -> str:
    """Markdown: per-epoch mean +- std test accuracy of both, then last / selected / time."""
    rows = [f"**{name}** ({len(keras_runs)} seeds): test accuracy, mean +- std",
            "", "| epoch | plain Keras | CLID-MU (WNet + CLID) |", "|---:|---:|---:|"]
    for epoch in range(epochs):
        rows.append(f"| {epoch + 1} | "
                    f"{toolbox.mean_std([run[0][epoch] for run in keras_runs])} | "
                    f"{toolbox.mean_std([run[0][epoch] for run in clid_runs])} |")
    rows.append(f"| CLID-selected | - | {toolbox.mean_std([run[1] for run in clid_runs])} |")
    rows.append(f"| seconds | {toolbox.mean_std([run[-1] for run in keras_runs], 1)} | "
                f"{toolbox.mean_std([run[-1] for run in clid_runs], 1)} |")
    return "\n".join(rows)


def main(argv) -> None:
    del argv
    unknown = sorted(set(FLAGS.examples) - set(EXAMPLES))
    if unknown:
        toolbox.fail(f"--examples: unknown {unknown}; choose from {list(EXAMPLES)}")
    for name in FLAGS.examples:
        keras_runs, clid_runs = [], []
        for seed in (int(s) for s in FLAGS.seeds):
            build, x, y, x_test, y_test = example(name, seed, FLAGS.train_size,
                                                  FLAGS.test_size, FLAGS.noise_rate)
            keras_runs.append(run_keras(build, x, y, x_test, y_test, FLAGS.epochs))
            clid_runs.append(run_clid_mu(build, x, y, x_test, y_test, FLAGS.epochs,
                                         FLAGS.warmup, seed))
            print(f"{name} seed {seed}: keras last {keras_runs[-1][0][-1]:.3f}, CLID-MU last "
                  f"{clid_runs[-1][0][-1]:.3f} selected {clid_runs[-1][1]:.3f}", flush=True)
        print()
        print(table(name, keras_runs, clid_runs, FLAGS.epochs))
        print()


if __name__ == "__main__":
    define_flags()
    app.run(main)
