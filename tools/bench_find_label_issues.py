"""`clid_tf.find_label_issues` (the Python API) against cleanlab, on digits with flipped
labels, everything out of sample.

For every seed, 30% (`--rate`) of the 1797 digits labels are flipped to another class
(`sym_exact`), and each row ranks the labels by suspicion:

  clid_tf CLID-MU          find_label_issues with a CLID-MU model (WNet, CLID) of the
                           README's small CNN, its defaults (5 folds, 30 epochs, 5 warm-up,
                           the confident-learning filter)
  ..., predicted != given  the same probabilities with the argmax-disagreement filter
  clid_tf plain Keras      the same call with the same CNN compiled as a plain Keras model
                           (cross-entropy, Adam): the API's plain-Keras path
  cleanlab + LR            cleanlab.filter.find_label_issues(labels, pred_probs) (its default
                           filter, prune_by_noise_rate), pred_probs from scikit-learn's
                           logistic regression, 5-fold cross_val_predict
  clid_tf rank + LR        clid_tf.rank_label_issues on those same pred_probs
  cleanlab + CLID-MU probs cleanlab's default filter on the CLID-MU row's probabilities
  cleanlab confident_learning + CLID-MU probs
                           cleanlab's confident_learning filter on them: the same flags as
                           the first row's, if clid_tf's filter is cleanlab's

Columns: ROC AUC of the suspicion for the flipped labels (cleanlab: 1 - its label quality
score), precision and recall of the flagged set (as many as each method estimates), the
estimated noise rate, and the seconds each took (the LR rows include fitting the LR folds;
the last row only cleanlab's filter). Mean +- std over seeds. Needs cleanlab (pip install
".[bench]"); it is a benchmark dependency, not a runtime one.

  python tools/bench_find_label_issues.py --seeds=0,1,2
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
from absl import app, flags

import toolbox

FLAGS = flags.FLAGS
ROWS = ("clid_tf CLID-MU", "clid_tf CLID-MU, predicted != given", "clid_tf plain Keras",
        "cleanlab + LR", "clid_tf rank + LR", "cleanlab + CLID-MU probs",
        "cleanlab confident_learning + CLID-MU probs")
COLUMNS = ("roc_auc", "precision", "recall", "estimated_noise_rate", "seconds")


def define_flags() -> None:
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (noise draw and folds).")
    flags.DEFINE_float("rate", 0.3, "Share of labels flipped to another class.")
    flags.DEFINE_integer("folds", 5, "K of every cross-fitting.")
    flags.DEFINE_integer("epochs", 0, "Epochs per fold for the clid_tf rows (0: the API's "
                         "default).")


def _cnn():
    import keras  # pylint: disable=import-outside-toplevel
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(32, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def one_seed(seed: int) -> dict[str, dict]:
    # pylint: disable=import-outside-toplevel
    import keras
    from cleanlab import filter as cl_filter, rank as cl_rank
    from sklearn import datasets, linear_model, model_selection

    import clid_tf
    from clid_tf.data import noise

    digits = datasets.load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    clean = digits.target.astype(np.int64)
    y = noise.corrupt(clean, kind="sym_exact", rate=FLAGS.rate, num_classes=10, seed=seed)
    flipped = y != clean
    fit = {"epochs": FLAGS.epochs} if FLAGS.epochs else {}
    rows = {}

    def clid_model():
        keras.utils.set_random_seed(seed)
        model = clid_tf.MetaReweightModel(_cnn(), clid_tf.WeightNet(seed=seed))
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "adam")
        return model

    def plain_model():
        keras.utils.set_random_seed(seed)
        model = _cnn()
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        return model

    clid_probs = None
    for name, build in (("clid_tf CLID-MU", clid_model), ("clid_tf plain Keras", plain_model)):
        started = time.perf_counter()
        issues = clid_tf.find_label_issues(build, x, y, folds=FLAGS.folds, seed=seed,
                                           verbose=False, **fit)
        seconds = time.perf_counter() - started
        rows[name] = {**toolbox.detection_scores(issues.suspicion, issues.flagged, flipped), "seconds": seconds}
        if clid_probs is None:
            clid_probs = issues.scores.probs
            other = clid_tf.rank_label_issues(y, clid_probs, filter_by="predicted_neq_given")
            rows[f"{name}, predicted != given"] = {
                **toolbox.detection_scores(other.suspicion, other.flagged, flipped), "seconds": seconds}

    started = time.perf_counter()
    lr = linear_model.LogisticRegression(max_iter=2000)
    probs = model_selection.cross_val_predict(
        lr, x.reshape(len(x), -1), y, method="predict_proba",
        cv=model_selection.StratifiedKFold(FLAGS.folds, shuffle=True, random_state=seed))
    lr_seconds = time.perf_counter() - started
    for name, p, filter_by in (
            ("cleanlab + LR", probs, "prune_by_noise_rate"),
            ("cleanlab + CLID-MU probs", clid_probs, "prune_by_noise_rate"),
            ("cleanlab confident_learning + CLID-MU probs", clid_probs, "confident_learning")):
        started = time.perf_counter()
        flagged = cl_filter.find_label_issues(y, p, filter_by=filter_by)
        quality = cl_rank.get_label_quality_scores(y, p)
        seconds = time.perf_counter() - started + (lr_seconds if "LR" in name else 0.0)
        rows[name] = {**toolbox.detection_scores(1.0 - quality, flagged, flipped), "seconds": seconds}
    started = time.perf_counter()
    issues = clid_tf.rank_label_issues(y, probs)
    rows["clid_tf rank + LR"] = {**toolbox.detection_scores(issues.suspicion, issues.flagged, flipped),
                                 "seconds": time.perf_counter() - started + lr_seconds}
    return rows


def table(results: list[dict], *, seeds: str, rate: float, folds: int) -> str:
    """The markdown table of the per-seed `one_seed` results."""
    lines = [f"digits (1797), {rate:.0%} of labels flipped to another class, "
             f"{folds}-fold out of sample; mean +- std over seeds {seeds}", "",
             "| method | ROC AUC | precision | recall | estimated noise | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in ROWS:
        cells = []
        for column in COLUMNS:
            cells.append(toolbox.mean_std([r[row][column] for r in results],
                                          1 if column == "seconds" else 3))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if importlib.util.find_spec("cleanlab") is None:
        toolbox.fail('cleanlab is not installed: pip install -e ".[bench]"')
    results = []
    for seed in (int(s) for s in FLAGS.seeds):
        results.append(one_seed(seed))
        print(f"seed {seed}: " + ", ".join(f"{k} AUC {v['roc_auc']:.3f}"
                                           for k, v in results[-1].items()), flush=True)
    print(table(results, seeds=",".join(FLAGS.seeds), rate=FLAGS.rate, folds=FLAGS.folds))


if __name__ == "__main__":
    define_flags()
    app.run(main)
