"""Why does the label-free selection pick the epoch it picks? Trains one run through the
command line, in this process, keeping every epoch's inference-mode features and logits of
the selection's meta set, then prints one table: per epoch, the held-out accuracy against
the noisy labels (`--val_split`), the selection's CLID, variants of it, and diagnostics.

  val (noisy)            accuracy on the held-out part of the noisy training data
  CLID                   the selection's score (recomputed on the same batches)
  CLID, centred features the same with each meta batch's mean feature subtracted first
  CLID excess            CLID minus its value for uniform prediction weights: how much
                         the predicted classes explain the feature similarities, with the
                         feature side's flatness taken out
  CLID, logits as features  the head's view: the logits in place of the last hidden layer
  mean cosine            mean cosine similarity of the meta set's feature pairs
  agreement with previous  share of meta samples predicted as in the epoch before
  training loss, mean meta weight of flipped labels   the run's own history (when logged)

Diagnostics that read the meta set's TRUE labels, when the run knows them (noise it
injected into benchmark data, or an npz's y_train_clean): they explain a ranking, they
choose nothing.

  accuracy (true)        the network's accuracy on the meta set
  class cosine gap (true)  mean feature cosine of same-class pairs minus different-class pairs
  10-NN accuracy (true)  a sample's true class by a vote of its 10 nearest features

Each variant's pick (its lowest eligible epoch) is printed with its held-out accuracy.

  python tools/selection_study.py --out=/tmp/study -- --flagfile=flags/fmnist_clid.cfg \\
      --dataset=npz:fashion_mnist.npz --seed=0 --val_split=0.1
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import toolbox

EPS = 1e-7  # CLID's epsilon inside the log


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clid_terms(features: np.ndarray, logits: np.ndarray, tau: float) -> tuple[float, float]:
    """CLID of one batch (features [n, d], logits [n, K]) and its value for uniform
    prediction weights (every row of Q = 1/n): (clid, uniform), numpy float64."""
    a = unit_rows(features) @ unit_rows(features).T / tau
    a = a * (a >= 0)  # negative similarities count as 0, as in CLID
    a = a - a.max(axis=1, keepdims=True)
    s = np.exp(a)
    s /= s.sum(axis=1, keepdims=True)
    cost = -np.log(s + EPS)
    p = unit_rows(softmax(logits))
    w = p @ p.T
    q = w / w.sum(axis=1, keepdims=True)
    return float(np.mean(np.sum(q * cost, axis=1))), float(np.mean(cost.mean(axis=1)))


def batched(features, logits, order_batches, fn) -> float:
    """Batch-size-weighted mean of fn(features_b, logits_b) over the selection's batches."""
    values = [fn(features[b], logits[b]) for b in order_batches]
    sizes = [len(b) for b in order_batches]
    return float(np.dot(values, sizes) / np.sum(sizes))


def true_label_diagnostics(features, logits, labels) -> dict[str, float]:
    """accuracy, class cosine gap and 10-NN accuracy of a meta set against its true labels."""
    cos = unit_rows(features) @ unit_rows(features).T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    gap = cos[same & off].mean() - cos[~same].mean()
    np.fill_diagonal(cos, -np.inf)
    neighbours = np.argsort(-cos, axis=1)[:, :10]
    votes = np.array([np.bincount(labels[n], minlength=logits.shape[1]).argmax()
                      for n in neighbours])
    return {"accuracy (true)": float(np.mean(logits.argmax(1) == labels)),
            "class cosine gap (true)": float(gap),
            "10-NN accuracy (true)": float(np.mean(votes == labels))}


def study(epochs: list[dict], *, tau: float, batch_size: int, seed: int,
          true_labels: np.ndarray | None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The table's rows, one value per epoch: (label-free scores, true-label diagnostics,
    {} without `true_labels`); `epochs` hold each epoch's meta features [n, d] and logits
    [n, K] (the meta set in its own order)."""
    from clid_tf.evaluation import selection  # pylint: disable=import-outside-toplevel
    rows: dict[str, list[float]] = {}
    diagnostics: dict[str, list[float]] = {}
    previous = None
    for number, epoch in enumerate(epochs, start=1):
        h = epoch["features"].astype(np.float64)
        z = epoch["logits"].astype(np.float64)
        order = selection.shuffled_batches(len(h), batch_size=batch_size, seed=seed + number)
        order = [b for b in order if len(b) > 1]  # a batch of one is skipped, as selection does
        found = {
            "CLID": batched(h, z, order, lambda f, g: clid_terms(f, g, tau)[0]),
            "CLID, centred features": batched(
                h, z, order, lambda f, g: clid_terms(f - f.mean(axis=0), g, tau)[0]),
            "CLID excess": batched(h, z, order, lambda f, g: np.subtract(*clid_terms(f, g, tau))),
            "CLID, logits as features": batched(z, z, order,
                                                lambda f, g: clid_terms(f, g, tau)[0]),
            "mean cosine": float((lambda c: c[np.triu_indices(len(c), 1)].mean())(
                unit_rows(h) @ unit_rows(h).T)),
            "agreement with previous": (np.nan if previous is None
                                        else float(np.mean(z.argmax(1) == previous))),
        }
        previous = z.argmax(1)
        for name, value in found.items():
            rows.setdefault(name, []).append(value)
        if true_labels is not None:
            for name, value in true_label_diagnostics(h, z, true_labels).items():
                diagnostics.setdefault(name, []).append(value)
    return rows, diagnostics


def table(val: list[float | None], rows: dict[str, list[float]], *,
          eligible_from: int) -> str:
    """Markdown: epochs as columns; then each CLID variant's pick."""
    from clid_tf.evaluation import selection  # pylint: disable=import-outside-toplevel
    n = len(next(iter(rows.values())))

    def cell(value) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"

    lines = ["| epoch | " + " | ".join(str(e) for e in range(1, n + 1)) + " |",
             "|---|" + "---:|" * n,
             "| val (noisy) | " + " | ".join(cell(v) for v in val[:n]) + " |"]
    lines += [f"| {name} | " + " | ".join(cell(v) for v in values) + " |"
              for name, values in rows.items()]
    lines.append("")
    last = val[n - 1]
    for name in ("CLID", "CLID, centred features", "CLID excess", "CLID, logits as features"):
        if name not in rows:
            continue
        values = rows[name]
        pick = selection.lowest_score_epoch(values, range(eligible_from, n + 1))
        lines.append(f"- {name}, every epoch ranked (--select_epochs=all), picks epoch "
                     f"{pick}: val (noisy) {cell(val[pick - 1])} against {cell(last)} at the "
                     "last epoch")
    return "\n".join(lines)


def main() -> None:
    own, argv = (sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
                 ) if "--" in sys.argv else (sys.argv[1:], [])
    outs = [a.split("=", 1)[1] for a in own if a.startswith("--out=")]
    if len(outs) != 1 or len(own) != 1 or not outs[0]:
        toolbox.fail("usage: selection_study.py --out=DIR -- TRAINING FLAGS")
    out = outs[0]
    # pylint: disable=import-outside-toplevel
    from absl import app
    from clid_tf import cli
    from clid_tf.cli import commands
    from clid_tf.cli.parsing import parse_flags
    from clid_tf.data import pipelines
    from clid_tf.evaluation import selection
    from clid_tf.trainers import runner

    dumped: list[dict] = []
    scored = selection.ClidSelection.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):  # the selection's epoch, then its meta set kept
        scored(self, epoch, logs)
        if self.prefix not in ("", "net1_"):  # one network's (DivideMix: the first)
            return
        features, logits = [], []
        for _, images in pipelines.ordered_batches(self.meta.inputs, self.meta.ids(),
                                                   batch_size=500):
            z, h = self._forward(images)  # pylint: disable=protected-access
            features.append(np.asarray(h))
            logits.append(np.asarray(z))
        dumped.append({"features": np.concatenate(features), "logits": np.concatenate(logits),
                       "ids": self.meta.ids(), "tau": self.tau, "batch_size": self.batch_size,
                       "seed": self.seed, "eligible_from": self.eligible_from})

    runs = []
    train_run = runner.train

    def train_recording(flags, setup, *args, **kwargs):  # keeps the run's data for the truth
        runs.append(setup)
        return train_run(flags, setup, *args, **kwargs)

    selection.ClidSelection.on_epoch_end = on_epoch_end
    runner.train = train_recording
    cli.define_flags()
    workdir = os.path.join(out, "run")

    def train(_):
        commands.run()  # its results are in workdir/results.json; app.run exits with 0

    try:
        app.run(train, argv=["selection_study", *argv, f"--workdir={workdir}", "--export=none"],
                flags_parser=parse_flags)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    history = json.load(open(os.path.join(workdir, "results.json")))["history"]
    first = dumped[0]
    clean = runs[0].dataset.train.clean_labels  # known for injected noise or y_train_clean
    true_labels = None if clean is None else np.asarray(clean)[first["ids"]]
    scores, diagnostics = study(dumped, tau=first["tau"], batch_size=first["batch_size"],
                                seed=first["seed"], true_labels=true_labels)
    val = history.get("val_accuracy") or history.get("net1_val_accuracy") or [None] * len(dumped)
    logged = {"training loss": history.get("loss"),
              "mean meta weight, flipped labels": history.get("weight_noisy")}
    logged = {k: [np.nan if x is None else x for x in v] for k, v in logged.items() if v}
    text = table(val, {**scores, **logged, **diagnostics}, eligible_from=first["eligible_from"])
    print(text)
    with open(os.path.join(out, "study.md"), "w") as f:
        f.write(text + "\n")
    np.savez(os.path.join(out, "epochs.npz"),
             **{f"{k}_{i + 1}": v for i, e in enumerate(dumped) for k, v in e.items()
                if k in ("features", "logits")})


if __name__ == "__main__":
    main()
