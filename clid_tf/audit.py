"""Label audit of a finished run: which training labels does the trained model doubt?

`python -m clid_tf.audit --workdir=RUN` rebuilds the run from `RUN/flags.cfg` (the same
noisy labels, training indices and meta split, via `clid_tf.splits.prepare`), restores the
backbone (and meta-net, if any) from each kept checkpoint of the last epochs
(`RUN/checkpoints`, up to 3), and scores every training sample in inference mode:

  probs    softmax of the backbone's logits, averaged over the checkpoints [N, K];
  weight   the meta-net's weight of the sample, averaged over the checkpoints [N]:
           WNet: the raw (unnormalised) weight of the sample's per-sample cross-entropy
           on its given label; VRI: sigmoid(mu)[y~], the weight of the given label's logit
           at the posterior mean mu of q(w | x, y~) (no sampling noise). Empty without a
           meta-net (method 'ce');
  suspicion  1 - probs[i, y~_i], the mean probability the model does NOT give the
           sample's given (noisy) label; in [0, 1], higher = more suspicious.

It writes `RUN/audit.csv` (one row per training sample, most suspicious first), merges the
metrics below under "audit" into `RUN/results.json`, and logs them as TensorBoard scalars
under `RUN/tensorboard/audit`:

  estimated_noise_rate  fraction of training samples whose predicted label (argmax of the
                        mean probabilities) differs from the given label; the
                        round(rate * N) most suspicious samples are "flagged";
  precision, recall     of the flagged set for the truly flipped samples, and
  roc_auc               of the suspicion score for detecting flipped samples, plus
  true_noise_rate       only when clean training labels are known (synthetic noise,
                        CIFAR-N, an npz with y_train_clean); None (JSON null) otherwise or
                        when undefined (e.g. AUC with no flipped sample).

Importing this module defines no absl flags; `main` defines its own.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from clid_tf import atomic_io

CHECKPOINT_DIR = "checkpoints"
CSV_NAME = "audit.csv"
TENSORBOARD_DIR = os.path.join("tensorboard", "audit")
SCALARS = ("precision", "recall", "roc_auc", "estimated_noise_rate", "true_noise_rate")


class AuditError(Exception):
    """A workdir the audit cannot use (no flags.cfg, no checkpoints, bad flags): one line."""


class RunConfig(NamedTuple):
    """The flags of a training run that the audit needs to rebuild its data and networks."""
    dataset: str
    data_dir: str | None
    noise: str
    noise_rate: float
    method: str
    meta_net: str
    meta_size: int
    batch_size: int
    meta_batch_size: int
    eval_batch_size: int
    seed: int
    imbalance_gamma: float
    backbone: str
    vri_kl: float
    tau: float
    meta_grad: str
    meta_scope: str
    weight_decay: float
    meta_weight_decay: float


# RunConfig field -> (parser of the flags.cfg string, default when the line is missing;
# _REQUIRED = the run cannot be rebuilt without it).
_REQUIRED = object()
_FIELDS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "dataset": (str, _REQUIRED),
    "data_dir": (lambda v: v or None, None),
    "noise": (str, _REQUIRED),
    "noise_rate": (float, _REQUIRED),
    "method": (str, _REQUIRED),
    "meta_net": (str, "wnet"),
    "meta_size": (int, _REQUIRED),
    "batch_size": (int, _REQUIRED),
    "meta_batch_size": (int, _REQUIRED),
    "eval_batch_size": (int, 500),
    "seed": (int, _REQUIRED),
    "imbalance_gamma": (float, 1.0),
    "backbone": (str, _REQUIRED),
    "vri_kl": (float, 0.01),
    "tau": (float, 0.5),
    "meta_grad": (str, "recompute"),
    "meta_scope": (str, "full"),
    "weight_decay": (float, 5e-4),
    "meta_weight_decay": (float, 5e-4),
}


class Scores(NamedTuple):
    """Per-sample model outputs averaged over checkpoints, in training-index order.

    Attributes:
      probs: float64 [N, K] mean softmax probabilities (inference mode).
      weights: float64 [N] mean meta-net weight, or None without a meta-net.
    """
    probs: np.ndarray
    weights: np.ndarray | None


# ---------------------------------------------------------------- the run's flags
def parse_flagfile(text: str) -> dict[str, str]:
    """Reads the `--name=value` lines of an absl flagfile into {name: value string}.

    A bare `--name` is a true boolean ("true"); a bare `--noname` is the false boolean
    `name` ("false"). (No training flag is a boolean whose own name starts with "no", so
    this is unambiguous for flags.cfg.) Blank lines and `#`/`//` comments are skipped.

    Args:
      text: the flagfile's contents, e.g. `FLAGS.flags_into_string()`.

    Returns:
      {flag name: raw value string}; later lines override earlier ones.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, sep, value = line[2:].partition("=")
        if sep:
            values[name] = value
        elif name.startswith("no"):
            values[name[2:]] = "false"
        else:
            values[name] = "true"
    return values


def run_config(values: dict[str, str]) -> RunConfig:
    """Typed `RunConfig` from `parse_flagfile`'s strings.

    Raises:
      AuditError: a required flag is missing or a value does not parse.
    """
    config = {}
    for name, (parse, default) in _FIELDS.items():
        if name not in values:
            if default is _REQUIRED:
                raise AuditError(f"flags.cfg has no --{name}")
            config[name] = default
            continue
        try:
            config[name] = parse(values[name])
        except ValueError as error:
            raise AuditError(f"flags.cfg: bad --{name}={values[name]}") from error
    return RunConfig(**config)


def read_run_config(workdir: str) -> RunConfig:
    """`RunConfig` of the run in `workdir` (its flags.cfg). Raises AuditError."""
    path = os.path.join(workdir, "flags.cfg")
    if not os.path.isfile(path):
        raise AuditError(f"{path} not found: {workdir} is not a training run's workdir")
    with open(path) as f:
        return run_config(parse_flagfile(f.read()))


def prepare_setup(config: RunConfig):
    """The run's `splits.Setup` (same noisy labels, training indices and meta split)."""
    from clid_tf import datasets, splits  # pylint: disable=import-outside-toplevel
    try:
        return splits.prepare(
            dataset=config.dataset, data_dir=config.data_dir, noise=config.noise,
            noise_rate=config.noise_rate, human_noise=config.noise in datasets.HUMAN_LABELS,
            method=config.method, meta_size=config.meta_size, batch_size=config.batch_size,
            meta_batch_size=config.meta_batch_size, seed=config.seed,
            imbalance_gamma=config.imbalance_gamma)
    except (ValueError, datasets.DataError) as error:
        raise AuditError(f"cannot rebuild the run's data: {error}") from error


# ---------------------------------------------------------------- checkpoints
def checkpoint_epoch(path: str) -> int:
    """Epoch of a RunState checkpoint: '.../ckpt-12' -> 12 (kept free of TensorFlow)."""
    return int(path.rsplit("-", 1)[-1])


def checkpoint_paths(workdir: str, keep: int = 3) -> list[str]:
    """Prefixes of the last `keep` checkpoints in `workdir/checkpoints`, oldest first.

    Raises:
      AuditError: no checkpoint index, or a listed checkpoint's files are missing.
    """
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isfile(os.path.join(directory, "checkpoint")):
        raise AuditError(f"no checkpoints in {directory}")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    if not paths:
        raise AuditError(f"no checkpoints in {directory}")
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    paths = sorted(paths, key=checkpoint_epoch)[-keep:]
    for path in paths:
        if not os.path.isfile(f"{path}.index"):
            raise AuditError(f"checkpoint {path} is listed but its files are missing")
    return paths


# ---------------------------------------------------------------- model outputs
def build_networks(setup, config: RunConfig):
    """Fresh (backbone, meta-net or None) with the run's architecture, for restoring."""
    from clid_tf import experiment  # pylint: disable=import-outside-toplevel
    try:
        model = experiment.build_model(
            setup, backbone=config.backbone, method=config.method, meta_net=config.meta_net,
            vri_kl=config.vri_kl, tau=config.tau, meta_grad=config.meta_grad,
            meta_scope=config.meta_scope, weight_decay=config.weight_decay,
            meta_weight_decay=config.meta_weight_decay, seed=config.seed)
    except ValueError as error:
        raise AuditError(f"cannot rebuild the run's networks: {error}") from error
    return model.backbone, model.meta_net


def scoring_function(backbone, meta_net) -> Callable:
    """tf.function: (images float32 [b, ...], labels int32 [b]) -> (probs [b, K], w [b]).

    probs = softmax(logits) in inference mode. w is the meta-net's weight of each sample
    for its given label: WNet(CE_i) for a `WeightNet` (raw, not batch-normalised), and
    sigmoid(mu_i)[y_i] for a `VRINet` (posterior mean, no noise); zeros without a meta-net.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf import objectives, vri  # pylint: disable=import-outside-toplevel

    @tf.function(reduce_retracing=True)
    def score(images, labels):
        logits, features = backbone(images, training=False)
        probs = tf.nn.softmax(logits, axis=-1)
        if meta_net is None:
            weights = tf.zeros(tf.shape(labels), probs.dtype)
        elif isinstance(meta_net, vri.VRINet):
            mu, _ = meta_net(features, labels)
            weights = tf.gather(tf.sigmoid(mu), labels, axis=1, batch_dims=1)
        else:
            weights = meta_net(objectives.per_sample_ce(logits, labels))
        return probs, tf.cast(weights, probs.dtype)

    return score


def score_samples(score: Callable, images: np.ndarray, labels: np.ndarray, *,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs `score` over the samples in order.

    Args:
      score: `scoring_function`'s result.
      images: [N, ...] raw inputs; labels: int [N] given labels.
      batch_size: inference batch size.

    Returns:
      (probs float64 [N, K], weights float64 [N]).
    """
    probs, weights = [], []
    for start in range(0, len(images), batch_size):
        p, w = score(np.asarray(images[start:start + batch_size], np.float32),
                     np.asarray(labels[start:start + batch_size], np.int32))
        probs.append(np.asarray(p, np.float64))
        weights.append(np.asarray(w, np.float64))
    return np.concatenate(probs), np.concatenate(weights)


def checkpoint_scores(setup, config: RunConfig, paths: Sequence[str]) -> Scores:
    """Mean probabilities and meta weights of the training samples over `paths`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    backbone, meta_net = build_networks(setup, config)
    parts = {"backbone": backbone}
    if meta_net is not None:
        parts["meta_net"] = meta_net
    checkpoint = tf.train.Checkpoint(**parts)
    score = scoring_function(backbone, meta_net)
    idx = setup.train_indices
    images, labels = setup.dataset.x_train[idx], setup.noisy_labels[idx]
    probs, weights = [], []
    for path in paths:
        try:
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, tf.errors.OpError) as error:
            raise AuditError(f"checkpoint {path} does not match the run's networks "
                             f"(flags.cfg changed?): {str(error).splitlines()[0]}") from error
        p, w = score_samples(score, images, labels, batch_size=config.eval_batch_size)
        probs.append(p)
        weights.append(w)
    return Scores(np.mean(probs, axis=0),
                  None if meta_net is None else np.mean(weights, axis=0))


# ---------------------------------------------------------------- pure metrics
def given_label_probs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """probs[i, labels[i]]. probs float [N, K], labels int [N] -> float [N]."""
    return np.take_along_axis(probs, np.asarray(labels)[:, None], axis=1)[:, 0]


def suspicion_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - probs[i, labels[i]]: how much the model doubts each given label. [N] in [0, 1]."""
    return 1.0 - given_label_probs(probs, labels)


def rank_by_suspicion(suspicion: np.ndarray) -> np.ndarray:
    """Order of the samples, most suspicious first (ties: lower position first). int [N]."""
    return np.argsort(-np.asarray(suspicion, np.float64), kind="stable")


def estimated_noise_rate(predicted: np.ndarray, given: np.ndarray) -> float:
    """Fraction of samples whose predicted label differs from the given one (0 if N = 0)."""
    predicted, given = np.asarray(predicted), np.asarray(given)
    return float(np.mean(predicted != given)) if len(given) else 0.0


def num_flagged(rate: float, num_samples: int) -> int:
    """round(rate * N): how many of the most suspicious samples are flagged."""
    return int(round(rate * num_samples))


def precision_recall_at_k(order: np.ndarray, is_flipped: np.ndarray,
                          k: int) -> tuple[float | None, float | None]:
    """Precision and recall of the first k samples of `order` for the flipped ones.

    Args:
      order: int [N] sample positions, most suspicious first (`rank_by_suspicion`).
      is_flipped: bool [N] ground truth per position.
      k: number flagged, 0 <= k <= N.

    Returns:
      (hits / k, hits / number flipped); each None when its denominator is 0.
    """
    is_flipped = np.asarray(is_flipped, bool)
    hits = int(np.sum(is_flipped[np.asarray(order)[:k]]))
    total = int(np.sum(is_flipped))
    return (hits / k if k else None), (hits / total if total else None)


def roc_auc(suspicion: np.ndarray, is_flipped: np.ndarray) -> float | None:
    """ROC AUC of `suspicion` [N] for detecting `is_flipped` [N]; None if one class only."""
    is_flipped = np.asarray(is_flipped, bool)
    if is_flipped.all() or not is_flipped.any():
        return None
    from sklearn import metrics  # pylint: disable=import-outside-toplevel
    return float(metrics.roc_auc_score(is_flipped, suspicion))


def audit_metrics(probs: np.ndarray, given: np.ndarray,
                  clean: np.ndarray | None = None) -> dict[str, Any]:
    """Noise-rate estimate and, with clean labels, detection quality of the suspicion.

    Args:
      probs: float [N, K] mean predicted probabilities of the training samples.
      given: int [N] given (noisy) labels.
      clean: int [N] true labels, or None when unknown.

    Returns:
      {num_train, estimated_noise_rate, num_flagged, true_noise_rate, precision, recall,
      roc_auc}; the last four None without clean labels (or when undefined).
    """
    given = np.asarray(given)
    suspicion = suspicion_scores(probs, given)
    rate = estimated_noise_rate(np.argmax(probs, axis=1), given)
    k = num_flagged(rate, len(given))
    result: dict[str, Any] = {"num_train": int(len(given)), "estimated_noise_rate": rate,
                              "num_flagged": k, "true_noise_rate": None, "precision": None,
                              "recall": None, "roc_auc": None}
    if clean is not None:
        is_flipped = np.asarray(clean) != given
        precision, recall = precision_recall_at_k(rank_by_suspicion(suspicion), is_flipped, k)
        result.update(true_noise_rate=float(np.mean(is_flipped)) if len(given) else None,
                      precision=precision, recall=recall,
                      roc_auc=roc_auc(suspicion, is_flipped))
    return result


# ---------------------------------------------------------------- the table and outputs
def audit_table(indices: np.ndarray, probs: np.ndarray, given: np.ndarray,
                weights: np.ndarray | None = None,
                clean: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per sample, most suspicious first.

    Args:
      indices: int [N] positions of the samples in the dataset's training arrays.
      probs: float [N, K] mean predicted probabilities.
      given: int [N] given (noisy) labels.
      weights: float [N] mean meta-net weights, or None (the column is then empty).
      clean: int [N] true labels, or None (no clean_label / is_flipped columns).

    Returns:
      Rows {index, given_label, predicted_label, predicted_prob, given_label_prob,
      meta_weight, suspicion[, clean_label, is_flipped]} sorted by suspicion, descending.
    """
    given = np.asarray(given)
    predicted = np.argmax(probs, axis=1)
    given_prob = given_label_probs(probs, given)
    rows = []
    for i in rank_by_suspicion(1.0 - given_prob):
        row = {"index": int(indices[i]), "given_label": int(given[i]),
               "predicted_label": int(predicted[i]),
               "predicted_prob": float(probs[i, predicted[i]]),
               "given_label_prob": float(given_prob[i]),
               "meta_weight": "" if weights is None else float(weights[i]),
               "suspicion": float(1.0 - given_prob[i])}
        if clean is not None:
            row.update(clean_label=int(clean[i]), is_flipped=int(clean[i] != given[i]))
        rows.append(row)
    return rows


def write_csv_atomic(path: str, rows: Sequence[dict[str, Any]],
                     columns: Sequence[str]) -> None:
    """Writes rows as CSV to a temporary file, then renames it over `path`."""
    with atomic_io.open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def merge_results(path: str, metrics: dict[str, Any]) -> None:
    """Sets results["audit"] = metrics in the JSON file `path` (atomic), keeping the rest."""
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    results["audit"] = metrics
    atomic_io.write_json(path, results)


def write_scalars(logdir: str, metrics: dict[str, Any], step: int) -> None:
    """TensorBoard scalars audit/<name> at `step` for the defined `SCALARS` of metrics."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name in SCALARS:
            if metrics.get(name) is not None:
                tf.summary.scalar(f"audit/{name}", metrics[name], step=step)
    writer.close()


# ---------------------------------------------------------------- the audit
def audit(workdir: str, *, setup=None) -> dict[str, Any]:
    """Audits the training labels of the run in `workdir`; writes CSV, JSON and scalars.

    Args:
      workdir: a training run's folder (flags.cfg, checkpoints/, results.json).
      setup: the run's `splits.Setup` when the caller already has it (the training CLI);
        None rebuilds it from flags.cfg.

    Returns:
      The metrics dict also stored as results.json["audit"]: `audit_metrics`' keys plus
      checkpoint_epochs (list of int), has_meta_net (bool) and csv (path of audit.csv).

    Raises:
      AuditError: the workdir lacks flags.cfg or checkpoints, or they do not fit together.
    """
    config = read_run_config(workdir)
    paths = checkpoint_paths(workdir)
    if setup is None:
        setup = prepare_setup(config)
    scores = checkpoint_scores(setup, config, paths)
    idx = setup.train_indices
    given = setup.noisy_labels[idx]
    clean = setup.dataset.y_train_clean
    clean = None if clean is None else clean[idx]
    rows = audit_table(idx, scores.probs, given, scores.weights, clean)
    columns = list(rows[0]) if rows else ["index"]
    csv_path = os.path.join(workdir, CSV_NAME)
    write_csv_atomic(csv_path, rows, columns)
    epochs = [checkpoint_epoch(p) for p in paths]
    metrics = {**audit_metrics(scores.probs, given, clean), "checkpoint_epochs": epochs,
               "has_meta_net": scores.weights is not None, "csv": csv_path}
    merge_results(os.path.join(workdir, "results.json"), metrics)
    write_scalars(os.path.join(workdir, TENSORBOARD_DIR), metrics, step=epochs[-1])
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    epochs = ", ".join(str(e) for e in metrics["checkpoint_epochs"])
    text = (f"Audited {metrics['num_train']} training labels with the checkpoints of epochs "
            f"{epochs}{' and the meta-net' if metrics['has_meta_net'] else ''}. Estimated "
            f"noise rate {metrics['estimated_noise_rate']:.4f} (predicted label != given "
            f"label); the {metrics['num_flagged']} most suspicious samples are flagged.")
    if metrics["true_noise_rate"] is not None:
        text += (f" Against the clean labels (true noise rate "
                 f"{metrics['true_noise_rate']:.4f}): precision {_fmt(metrics['precision'])}, "
                 f"recall {_fmt(metrics['recall'])}, ROC AUC {_fmt(metrics['roc_auc'])}.")
    return text + f" Ranked samples: {metrics['csv']}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- command line
def define_flags() -> None:
    """The audit's own flags (on absl's global FLAGS; call only from the entry point)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("workdir", None, "Folder of a finished training run (flags.cfg, "
                        "checkpoints/).")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    """Entry point for `absl.app.run`: an AuditError becomes one line and exit code 2."""
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        metrics = audit(flags.FLAGS.workdir)
    except AuditError as error:
        _fail(str(error))
    print(summary(metrics))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app  # pylint: disable=ungrouped-imports
    from absl import flags as _flags  # pylint: disable=ungrouped-imports

    def _parse(argv):  # a bad flag is one line and exit code 2, as for training
        try:
            return _flags.FLAGS(argv)
        except _flags.Error as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    define_flags()
    app.run(main, flags_parser=_parse)
