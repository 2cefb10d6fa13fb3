"""Which training labels are suspicious, scored out of sample (cleanlab's recipe, CLID-MU
models).

K-fold cross-fitting: the training samples are split into K folds (stratified by given
label, seeded); for each fold a fresh model is trained on the other K-1 folds and scores
the held-out fold, so every sample's probabilities come from a model that never saw its
label. Per sample:

  probs      out-of-sample softmax probabilities [N, K];
  weight     the meta-net's weight of the sample under the model that scored it: WNet, the
             raw (unnormalised) weight of its cross-entropy on its given label; VRI,
             sigmoid(mu)[y~], the weight of the given label's logit at the posterior mean
             (no sampling noise). None without a meta-net;
  suspicion  1 - probs[i, y~_i] (cleanlab's self-confidence, out of sample); in [0, 1],
             higher = more suspicious.

Which samples are flagged as issues is a filter, cleanlab's two main ones:

  'confident_learning' (default, cleanlab's `filter_by='confident_learning'`): per class k a
                  threshold t_k, the mean probability of k over the samples labelled k; a
                  sample is confidently of class j when p_ij >= t_j (of the argmax when
                  several classes pass); it is flagged when that class is not its given
                  label and its argmax is not the given label either.
  'predicted_neq_given': the samples whose argmax differs from the given label.

The estimated noise rate is the flagged fraction. Issues are listed most suspicious first.
With known true labels (a benchmark) `metrics` also reports precision and recall of the
flagged set and the ROC AUC of the suspicion for the truly flipped samples. Labels may be of
any type (ints, strings): they become class ids in the order of their sorted unique values
(or of the `class_names` given), which `LabelIssues.class_names` keeps.

The pure functions take numpy arrays; `cross_fit` takes a `train_fold` function so the CLI
and a Python user train folds their own way; `find_label_issues` is that for arrays and a
model factory (a CLID-MU model or any compiled Keras classifier); `rank_label_issues`
ranks labels by out-of-sample probabilities computed elsewhere (cleanlab's
`find_label_issues(labels, pred_probs)` call shape).
"""

from __future__ import annotations

import csv
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from clid_tf import atomic_io
from clid_tf.data.inputs import as_inputs, num_samples, take

SCALARS = ("precision", "recall", "roc_auc", "estimated_noise_rate", "true_noise_rate")
FILTERS = ("confident_learning", "predicted_neq_given")
DEFAULT_FILTER = "confident_learning"

# What each fold trains with unless the fit arguments say otherwise (the command line's
# defaults): 30 epochs of batches of 64, and for a CLID-MU model 5 warm-up epochs and a
# meta set of a fifth of the fold (at most 1000).
DEFAULT_FIT = {"epochs": 30, "batch_size": 64, "verbose": 0}
DEFAULT_WARMUP_EPOCHS = 5


class Scores(NamedTuple):
    """Per-sample model outputs, in sample order.

    Attributes:
      probs: float64 [N, K] predicted probabilities (inference mode).
      weights: float64 [N] meta-net weights, or None without a meta-net.
    """
    probs: np.ndarray
    weights: np.ndarray | None


class LabelIssues(NamedTuple):
    """The result of `find_label_issues`.

    Attributes:
      ranked: int64 [N] sample positions, most suspicious first.
      issues: int64 [n_flagged] the flagged positions, most suspicious first.
      suspicion: float64 [N] 1 - out-of-sample probability of the given label.
      scores: the out-of-sample `Scores`.
      metrics: `metrics(...)` of the ranking.
      class_names: the K classes in class-id order (the labels as given: ints, strings).
      flagged: bool [N] whether each sample is flagged (`filter_by`).
    """
    ranked: np.ndarray
    issues: np.ndarray
    suspicion: np.ndarray
    scores: Scores
    metrics: dict
    class_names: tuple = ()
    flagged: np.ndarray | None = None


# ---------------------------------------------------------------- pure scoring
def given_label_probs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """probs[i, labels[i]]. probs float [N, K], labels int [N] -> float [N]."""
    return np.take_along_axis(probs, np.asarray(labels)[:, None], axis=1)[:, 0]


def suspicion_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - probs[i, labels[i]]: how much the model doubts each given label. [N] in [0, 1]."""
    return 1.0 - given_label_probs(probs, labels)


def rank_by_suspicion(suspicion: np.ndarray) -> np.ndarray:
    """Order of the samples, most suspicious first (ties: lower position first). int [N]."""
    return np.argsort(-np.asarray(suspicion, np.float64), kind="stable")


def flag_issues(probs: np.ndarray, given: np.ndarray, *,
                filter_by: str = DEFAULT_FILTER) -> np.ndarray:
    """bool [N]: the flagged samples of probabilities [N, K] and given labels [N] under one
    of FILTERS (module docstring; 'confident_learning' as cleanlab 2.9 computes it)."""
    if filter_by not in FILTERS:
        raise ValueError(f"filter_by must be one of {FILTERS}, got {filter_by!r}")
    probs, given = np.asarray(probs, np.float64), np.asarray(given)
    predicted = probs.argmax(axis=1)
    wrong_argmax = predicted != given
    if filter_by == "predicted_neq_given" or not len(given):
        return wrong_argmax
    num_classes = probs.shape[1]
    self_confidence = given_label_probs(probs, given)
    counts = np.bincount(given, minlength=num_classes)
    thresholds = np.bincount(given, weights=self_confidence, minlength=num_classes) / \
        np.maximum(counts, 1)
    confident = probs >= thresholds - 1e-6
    several = confident.sum(axis=1) > 1
    guess = np.where(several, predicted, confident.argmax(axis=1))
    off_diagonal = confident.any(axis=1) & (guess != given)
    # cleanlab's _reduce_issues: a sample whose argmax (ties to the given label) is its
    # given label is not an issue
    tied = probs.copy()
    tied[np.arange(len(given)), given] += 1e-6
    return off_diagonal & (tied.argmax(axis=1) != given)


def roc_auc(suspicion: np.ndarray, is_flipped: np.ndarray) -> float | None:
    """ROC AUC of `suspicion` [N] for detecting `is_flipped` [N]; None if one class only."""
    is_flipped = np.asarray(is_flipped, bool)
    if is_flipped.all() or not is_flipped.any():
        return None
    # deferred: scikit-learn (heavy) loads only when used, not with the command line
    from sklearn import metrics as sk_metrics  # pylint: disable=import-outside-toplevel
    return float(sk_metrics.roc_auc_score(is_flipped, suspicion))


def metrics(probs: np.ndarray, given: np.ndarray, clean: np.ndarray | None = None, *,
            flagged: np.ndarray | None = None) -> dict[str, Any]:
    """Noise-rate estimate and, with true labels, detection quality of the flagged set and
    of the suspicion.

    Args:
      probs: float [N, K] predicted probabilities of the training samples.
      given: int [N] given (noisy) labels.
      clean: int [N] true labels, or None when unknown.
      flagged: bool [N] the flagged samples (default: `flag_issues` with DEFAULT_FILTER).

    Returns:
      {num_train, estimated_noise_rate (the flagged fraction), num_flagged,
      true_noise_rate, precision, recall, roc_auc}; the last four None without true labels
      (or when undefined).
    """
    given = np.asarray(given)
    if flagged is None:
        flagged = flag_issues(probs, given)
    flagged = np.asarray(flagged, bool)
    k = int(flagged.sum())
    result: dict[str, Any] = {"num_train": int(len(given)),
                              "estimated_noise_rate": float(flagged.mean()) if len(given) else 0.0,
                              "num_flagged": k, "true_noise_rate": None, "precision": None,
                              "recall": None, "roc_auc": None}
    if clean is not None:
        is_flipped = np.asarray(clean) != given
        hits, total = int(np.sum(is_flipped & flagged)), int(np.sum(is_flipped))
        result.update(true_noise_rate=float(np.mean(is_flipped)) if len(given) else None,
                      precision=hits / k if k else None,
                      recall=hits / total if total else None,
                      roc_auc=roc_auc(suspicion_scores(probs, given), is_flipped))
    return result


def table(names: Sequence[str], scores: Scores, given: np.ndarray, *,
          class_names: Sequence[str], clean: np.ndarray | None = None,
          flagged: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per sample, most suspicious first.

    Args:
      names: [N] what names each sample (its file path, or its index for arrays).
      scores: the samples' `Scores`.
      given: int [N] given labels.
      class_names: K names; labels appear by name.
      clean: int [N] true labels, or None (no true_label / is_flipped columns).
      flagged: bool [N] the flagged samples (default: `flag_issues` with DEFAULT_FILTER).

    Returns:
      Rows {rank, sample, given_label, predicted_label, given_label_prob, predicted_prob,
      meta_weight, suspicion, flagged[, true_label, is_flipped]}.
    """
    given = np.asarray(given)
    probs = scores.probs
    predicted = np.argmax(probs, axis=1)
    given_prob = given_label_probs(probs, given)
    if flagged is None:
        flagged = flag_issues(probs, given)
    rows = []
    for rank, i in enumerate(rank_by_suspicion(1.0 - given_prob)):
        row = {"rank": rank + 1, "sample": str(names[i]),
               "given_label": class_names[given[i]],
               "predicted_label": class_names[predicted[i]],
               "given_label_prob": round(float(given_prob[i]), 6),
               "predicted_prob": round(float(probs[i, predicted[i]]), 6),
               "meta_weight": "" if scores.weights is None else round(float(scores.weights[i]), 6),
               "suspicion": round(float(1.0 - given_prob[i]), 6),
               "flagged": int(flagged[i])}
        if clean is not None:
            row.update(true_label=class_names[clean[i]], is_flipped=int(clean[i] != given[i]))
        rows.append(row)
    return rows


# A spreadsheet reads a cell that starts with one of these as a formula (CSV injection):
# such a text cell (a file or class name) is written with a leading apostrophe, the
# spreadsheets' mark of literal text; `read_csv_text` takes it off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """A text cell as written to audit.csv: literal text in any spreadsheet."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def read_csv_text(cell: str) -> str:
    """The text that `csv_text` wrote as `cell`."""
    return cell[1:] if cell.startswith("'") else cell


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """The rows as CSV, written to a temporary file and renamed over `path`; text cells
    through `csv_text`, so no file or class name becomes a spreadsheet formula."""
    columns = list(rows[0]) if rows else ["rank", "sample"]
    with atomic_io.open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: csv_text(v) for k, v in row.items()} for row in rows)


def write_arrays(path: str, scores: Scores, given: np.ndarray, samples: np.ndarray) -> None:
    """The audit's numbers for other tools (cleanlab takes `labels` and `pred_probs`), as
    an npz written to a temporary file and renamed over `path`: probs float32 [N, K],
    labels int64 [N] (the given labels), samples int64 [N] (positions in the training
    source) and, with a meta-net, weights float32 [N]; rows in sample order."""
    arrays = {"probs": np.asarray(scores.probs, np.float32),
              "labels": np.asarray(given, np.int64), "samples": np.asarray(samples, np.int64)}
    if scores.weights is not None:
        arrays["weights"] = np.asarray(scores.weights, np.float32)
    with atomic_io.open_atomic(path, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------- cross-fitting
def folds_of(labels: np.ndarray, *, folds: int, seed: int) -> list[np.ndarray]:
    """K stratified folds of the positions 0..N-1 (seeded): int64 arrays, sorted."""
    # deferred: scikit-learn (heavy) loads only when used, not with the command line
    from sklearn import model_selection  # pylint: disable=import-outside-toplevel
    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    smallest = int(np.bincount(labels).min(initial=len(labels))) if len(labels) else 0
    splitter = (model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
                if smallest >= folds else
                model_selection.KFold(folds, shuffle=True, random_state=seed))
    return [np.sort(held).astype(np.int64)
            for _, held in splitter.split(np.zeros(len(labels)), labels)]


# train_fold(training positions int64 [n]) -> score(held-out positions int64 [m]) -> Scores
TrainFold = Callable[[np.ndarray], Callable[[np.ndarray], Scores]]


def cross_fit(labels: np.ndarray, train_fold: TrainFold, *, folds: int = 5, seed: int = 0,
              on_fold: Callable[[int, int], None] | None = None) -> Scores:
    """Out-of-sample `Scores` of every sample by K-fold cross-fitting.

    Args:
      labels: int [N] given labels (for stratification only).
      train_fold: trains a fresh model on the given positions and returns its scorer.
      folds: K.
      seed: seed of the fold assignment.
      on_fold: called with (fold number, K) before each fold (progress).
    """
    parts = folds_of(labels, folds=folds, seed=seed)
    probs, weights = None, None
    everything = np.arange(len(labels), dtype=np.int64)
    for number, held in enumerate(parts):
        if on_fold is not None:
            on_fold(number + 1, folds)
        score = train_fold(np.setdiff1d(everything, held))
        fold = score(held)
        if probs is None:
            probs = np.zeros((len(labels), fold.probs.shape[1]))
            weights = None if fold.weights is None else np.zeros(len(labels))
        probs[held] = fold.probs
        if weights is not None:
            weights[held] = fold.weights
    return Scores(probs, weights)


def issues_of(scores: Scores, given: np.ndarray, clean: np.ndarray | None = None, *,
              filter_by: str = DEFAULT_FILTER, class_names: Sequence = ()) -> LabelIssues:
    """Ranking, flagged issues (most suspicious first) and metrics of the samples'
    (out-of-sample) scores."""
    given = np.asarray(given)
    suspicion = suspicion_scores(scores.probs, given)
    ranked = rank_by_suspicion(suspicion)
    flagged = flag_issues(scores.probs, given, filter_by=filter_by)
    found = {**metrics(scores.probs, given, clean, flagged=flagged), "filter_by": filter_by}
    return LabelIssues(ranked, ranked[flagged[ranked]], suspicion, scores, found,
                       tuple(class_names), flagged)


def class_ids(labels, *, class_names: Sequence | None = None, n: int | None = None
              ) -> tuple[np.ndarray, tuple]:
    """(int64 class ids [N], the classes in id order) of labels of any type: ints,
    strings, ... With `class_names`, a label's id is its position there (ValueError, one
    line, for a label it does not name); without, ids follow the sorted unique labels,
    except that integer labels are their own ids (0..max). [N, 1] labels are flattened."""
    given = np.asarray(labels)
    if given.ndim == 2 and given.shape[1] == 1:
        given = given[:, 0]
    if given.ndim != 1 or (n is not None and len(given) != n):
        raise ValueError(f"labels must be [{n if n is not None else 'N'}], got shape "
                         f"{given.shape}")
    if class_names is not None:
        index = {name: k for k, name in enumerate(class_names)}
        unknown = [v for v in given.tolist() if v not in index]
        if unknown:
            raise ValueError(f"label {unknown[0]!r} is not one of class_names")
        return np.array([index[v] for v in given.tolist()], np.int64), tuple(class_names)
    integral = np.issubdtype(given.dtype, np.integer) or (
        np.issubdtype(given.dtype, np.floating) and np.all(np.isfinite(given))
        and np.all(given == np.round(given)))
    if integral:
        ids = given.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise ValueError("integer labels must be class ids >= 0")
        top = int(ids.max()) + 1 if ids.size else 0
        if top > max(len(ids), 2):
            raise ValueError(f"label {top - 1} would make {top} classes of {len(ids)} "
                             "samples; give class_names to say which classes there are")
        return ids, tuple(range(top))
    names, ids = np.unique(given, return_inverse=True)
    return ids.astype(np.int64), tuple(names.tolist())


# ---------------------------------------------------------------- with Keras models
def scoring_function(backbones, meta_net=None):
    """tf.function: (inputs float32 [b, ...], labels int32 [b]) -> (probs [b, K], w [b]).

    probs = softmax of the mean logits of `backbones` (one network, or several trained
    together) in inference mode; w as in the module docstring, the meta-net's weight of
    each given label under the first network's features (zeros without a meta-net).
    """
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    backbones = list(backbones) if isinstance(backbones, (list, tuple)) else [backbones]

    @tf.function(reduce_retracing=True)
    def score(images, labels):
        outputs = [net(images, training=False) for net in backbones]
        logits = tf.add_n([tf.cast(z, tf.float32) for z, _ in outputs]) / len(outputs)
        probs = tf.nn.softmax(logits, axis=-1)
        if meta_net is None:
            weights = tf.zeros(tf.shape(labels), probs.dtype)
        else:  # the weight of each given label (`metanets.MetaNet.label_weights`)
            weights = meta_net.label_weights(outputs[0][0], outputs[0][1], labels)
        return probs, tf.cast(weights, probs.dtype)

    return score


def score_part(model, part, *, batch_size: int = 500) -> Scores:
    """`Scores` of a `data.Part` (inputs and given labels) under a trained model, in the
    part's order: a trainer model (its predicting networks and meta-net), or any Keras
    classifier (`models.user_models.as_classifier`; probabilities = softmax of its
    logits, no weights)."""
    if hasattr(model, "predicting"):
        networks, meta_net = model.predicting(), getattr(model, "meta_net", None)
    else:
        # deferred: keeps TensorFlow out of the command line's checks
        from clid_tf.models import user_models  # pylint: disable=import-outside-toplevel
        networks, meta_net = [user_models.as_classifier(model)], None
    return scores_of(scoring_function(networks, meta_net), part,
                     with_weights=meta_net is not None, batch_size=batch_size)


def scores_of(score, part, *, with_weights: bool, batch_size: int = 500) -> Scores:
    """`Scores` of a part under a `scoring_function`, in the part's order (weights None
    unless `with_weights`)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import pipelines  # pylint: disable=import-outside-toplevel
    labels = np.asarray(part.labels, np.int32)
    probs, weights, start = [], [], 0
    for ids, images in pipelines.ordered_batches(part.inputs, part.ids(),
                                                 batch_size=batch_size):
        stop = start + int(ids.shape[0])
        p, w = score(images, labels[start:stop])
        probs.append(np.asarray(p, np.float64))
        weights.append(np.asarray(w, np.float64))
        start = stop
    return Scores(np.concatenate(probs), np.concatenate(weights) if with_weights else None)


# The run's last checkpoints whose scores the in-sample audit averages.
IN_SAMPLE_CHECKPOINTS = 3


def checkpoint_scores(paths: Sequence[str], restore: Callable[[str], None], backbones,
                      part, *, meta_net=None, batch_size: int = 500) -> Scores:
    """Mean `Scores` of a part over checkpoints (in sample): for each path, `restore(path)`
    loads the networks (and meta-net), then they score the part (`scoring_function`,
    traced once for all checkpoints).

    Args:
      paths: checkpoint prefixes, at least one.
      restore: loads one checkpoint into `backbones` and `meta_net`.
      backbones: the network, or the networks trained together (logits averaged).
      part: the samples with their given labels.
      meta_net: its weights are averaged too; None for no weights.
    """
    score = scoring_function(backbones, meta_net)
    probs, weights = [], []
    for path in paths:
        restore(path)
        scores = scores_of(score, part, with_weights=meta_net is not None,
                           batch_size=batch_size)
        probs.append(scores.probs)
        weights.append(scores.weights)
    return Scores(np.mean(probs, axis=0),
                  None if meta_net is None else np.mean(weights, axis=0))


def find_label_issues(build_model: Callable[[], Any], x, y, *, folds: int = 5,
                      seed: int = 0, clean_labels=None, class_names: Sequence | None = None,
                      filter_by: str = DEFAULT_FILTER, eval_batch_size: int = 500,
                      verbose: bool = True, **fit_kwargs) -> LabelIssues:
    """Ranks a dataset's labels by suspicion, out of sample (cleanlab-style).

    Args:
      build_model: returns a fresh compiled model for one fold: a
        `clid_tf.MetaReweightModel` (e.g. with a WeightNet and the 'clid' objective) or
        any compiled Keras classifier ending in a Dense layer (K outputs).
      x: inputs [N, ...]; y: [N] given labels of any type (ints, strings; `class_ids`).
      folds: K of the cross-fitting (5 by default).
      seed: fold assignment seed (and the default `seed` of each fold's CLID-MU fit).
      clean_labels: [N] true labels in y's terms, if known (benchmarks): adds precision,
        recall and ROC AUC to the metrics. Never used for the ranking.
      class_names: the classes in the model's output order, when y's sorted unique values
        are not that order (or do not name every class).
      filter_by: which samples are flagged (FILTERS; module docstring).
      eval_batch_size: inference batch size of the scoring passes.
      verbose: print one line per fold.
      **fit_kwargs: passed to each fold's `model.fit(x_fold, y_fold, ...)`; unless given,
        DEFAULT_FIT (30 epochs, batch 64), and for a CLID-MU model with a meta-net 5
        warm-up epochs of plain CE first (as `clid_tf.WarmUp(5)`, unless callbacks are
        given) and a meta set of a fifth of the fold (<= 1000).

    Returns:
      `LabelIssues`: ranked positions, flagged issues, suspicion, scores, metrics and the
      class names in class-id order.
    """
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import pipelines as data  # pylint: disable=import-outside-toplevel
    x = data.as_input_array(x)  # one array, or a dict / list of them (several inputs)
    y, names = class_ids(y, class_names=class_names, n=num_samples(x))
    clean = None if clean_labels is None else class_ids(clean_labels, class_names=names)[0]
    fit_kwargs = {**DEFAULT_FIT, **fit_kwargs}

    def train_fold(train_positions):
        model = build_model()
        kwargs = _fit_arguments(model, fit_kwargs, len(train_positions), seed)
        warmup = kwargs.pop("warmup_epochs", 0)
        if warmup:  # plain CE first, then meta steps: what clid_tf.WarmUp does
            model.set_meta_active(False)
            model.fit(take(x, train_positions), y[train_positions],
                      **{**kwargs, "epochs": warmup})
            model.set_meta_active(True)
            kwargs["initial_epoch"] = warmup
        model.fit(take(x, train_positions), y[train_positions], **kwargs)
        return lambda held: score_part(
            model, data.Part(as_inputs(take(x, held)), None, y[held]),
            batch_size=eval_batch_size)

    report = (lambda k, n: print(f"label issues: training fold {k} of {n}")) if verbose else None
    scores = cross_fit(y, train_fold, folds=folds, seed=seed, on_fold=report)
    if scores.probs.shape[1] < len(names):
        raise ValueError(f"the labels name {len(names)} classes but the model has "
                         f"{scores.probs.shape[1]} outputs")
    return issues_of(scores, y, clean, filter_by=filter_by, class_names=names)


def rank_label_issues(labels, pred_probs, *, clean_labels=None,
                      class_names: Sequence | None = None,
                      filter_by: str = DEFAULT_FILTER) -> LabelIssues:
    """Ranks labels by suspicion from out-of-sample probabilities computed elsewhere
    (cleanlab's `find_label_issues(labels, pred_probs)` call shape): suspicion 1 -
    pred_probs[i, y_i]; the flagged samples by `filter_by`.

    Args:
      labels: [N] given labels of any type; integers index the columns of pred_probs,
        other labels are mapped by `class_names` (the column order) or, without it, by
        their sorted unique values, which must then name every column.
      pred_probs: float [N, K] out-of-sample probabilities (rows summing to 1).
      clean_labels: [N] true labels in the same terms, if known (metrics only).
      class_names: the K classes in column order.
      filter_by: which samples are flagged (FILTERS; module docstring).
    """
    probs = np.asarray(pred_probs, np.float64)
    if probs.ndim != 2:
        raise ValueError(f"pred_probs must be [N, K] probabilities, got shape {probs.shape}")
    given, names = class_ids(labels, class_names=class_names, n=len(probs))
    if len(names) != probs.shape[1] and not all(isinstance(n, int) for n in names):
        raise ValueError(f"the labels name {len(names)} classes but pred_probs has "
                         f"{probs.shape[1]} columns: give class_names in column order")
    if given.size and given.max() >= probs.shape[1]:
        raise ValueError(f"labels reach class {given.max()} but pred_probs has "
                         f"{probs.shape[1]} columns")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or probs.min(initial=0.0) < 0:
        raise ValueError("pred_probs rows must be probabilities (non-negative, summing to 1)")
    if all(isinstance(n, int) for n in names):
        names = tuple(range(probs.shape[1]))
    clean = None if clean_labels is None else class_ids(clean_labels, class_names=names)[0]
    return issues_of(Scores(probs, None), given, clean, filter_by=filter_by,
                     class_names=names)


def _fit_arguments(model, fit_kwargs: dict, num_train: int, seed: int) -> dict:
    """The fold's fit arguments: CLID-MU's own ones only for a CLID-MU model."""
    kwargs = dict(fit_kwargs)
    if not hasattr(model, "predicting"):  # a plain Keras model takes Keras' arguments
        return {k: v for k, v in kwargs.items()
                if k not in ("seed", "meta_size", "meta_batch_size", "meta_data")}
    kwargs.setdefault("seed", seed)
    if getattr(model, "meta_net", None) is not None:
        kwargs.setdefault("meta_size", max(1, min(1000, num_train // 5)))
        if "callbacks" not in kwargs and hasattr(model, "set_meta_active"):
            kwargs["warmup_epochs"] = min(DEFAULT_WARMUP_EPOCHS,
                                          max(0, int(kwargs["epochs"]) - 1))
    return kwargs
