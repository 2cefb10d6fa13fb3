"""Which epoch each selection rule picks in finished runs, against their last epoch.

For every run folder given, and for each network of the run (DivideMix's two), the
per-epoch meta-set CLID and learning rate of its results.json are ranked two ways: among
every epoch after the warm-up (`--select_epochs=all`, the authors' rule) and among the
epochs at the lowest learning rate (`--select_epochs=lowest_lr`, the default). The table
gives each pick's epoch and its accuracy on the held-out noisy labels (`--val_split`; what
a user can check) and on the test set (reported, never used to choose), beside the last
epoch's, and the mean and worst gap to the last epoch in points. Nothing is retrained:
the runs' own histories are re-ranked, so runs trained under either rule compare alike.

  python tools/compare_selection.py RUN [RUN ...]
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np

import toolbox


def networks(results: dict) -> list[str]:
    """The history prefixes of the run's networks: ['net1_', 'net2_'] or ['']."""
    history = results["history"]
    prefixes = [f"net{k}_" for k in (1, 2, 3) if f"net{k}_meta_set_clid" in history]
    return prefixes or [""]


def picks(results: dict, prefix: str) -> dict:
    """The last epoch and both rules' picks (1-based) of one network of one run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # deferred: a wrong folder is reported before TensorFlow loads
    from clid_tf.evaluation import selection  # pylint: disable=import-outside-toplevel
    history = results["history"]
    clid = history[prefix + "meta_set_clid"]
    rates = history.get(prefix + "lr") or history["lr"]
    first = results.get("eligible_from") or results["eligible_epochs"][0]
    every = [e for e in range(1, len(clid) + 1) if e >= first]
    lowest = selection.lowest_rate_epochs(rates, first)
    return {"last": len(clid), "all": selection.lowest_score_epoch(clid, every),
            "lowest_lr": selection.lowest_score_epoch(clid, lowest), "eligible": lowest}


def accuracies(results: dict, prefix: str) -> tuple[list | None, list]:
    """(held-out noisy accuracy per epoch or None, test accuracy per epoch) of one network
    (a network of a pair has no held-out accuracy of its own: None)."""
    history = results["history"]
    return history.get(prefix + "val_accuracy"), history[prefix + "test_accuracy"]


def table(rows: Sequence[tuple[str, dict, dict]]) -> str:
    """Markdown: one row per (run, network), then the gaps to the last epoch."""
    lines = ["| run | rule: every epoch (epoch) | rule: lowest lr (epoch, of) | val: last / every "
             "/ lowest | test: last / every / lowest | test, best (oracle) |",
             "|---|---:|---:|---|---|---:|"]
    gaps = {"all": {"val": [], "test": []}, "lowest_lr": {"val": [], "test": []}}
    for name, chosen, acc in rows:
        cells = {}
        for kind in ("val", "test"):
            series = acc[kind]
            if series is None:
                cells[kind] = "-"
                continue
            at = {k: series[chosen[k] - 1] for k in ("last", "all", "lowest_lr")}
            cells[kind] = " / ".join(f"{at[k]:.3f}" for k in ("last", "all", "lowest_lr"))
            for rule in gaps:
                gaps[rule][kind].append(100 * (at[rule] - at["last"]))
        lines.append(f"| {name} | {chosen['all']} | {chosen['lowest_lr']} "
                     f"({len(chosen['eligible'])}) | {cells['val']} | {cells['test']} | "
                     f"{max(acc['test']):.3f} |")
    lines.append("")
    lines.append("| rule | val: mean gap to last (worst), points | test: mean gap (worst) |")
    lines.append("|---|---|---|")
    for rule, kinds in gaps.items():
        cells = [f"{np.mean(v):+.2f} ({min(v):+.2f})" if v else "-"
                 for v in (kinds["val"], kinds["test"])]
        lines.append(f"| {rule} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def rows_of(folders: Sequence[str]) -> list[tuple[str, dict, dict]]:
    """(name, picks, {'val', 'test'} accuracies) per network of each run folder."""
    runs = []
    for folder in folders:  # every file is read before any is ranked
        path = os.path.join(folder, "results.json")
        try:
            with open(path) as f:
                runs.append((os.path.normpath(folder), json.load(f)))
        except (OSError, ValueError) as error:
            toolbox.fail(f"{path}: not a finished run's results.json ({error})")
    rows = []
    for name, results in runs:
        for prefix in networks(results):
            try:
                chosen, (val, test) = picks(results, prefix), accuracies(results, prefix)
                if not test or len(test) != chosen["last"] or not chosen["eligible"]:
                    raise ValueError("no test accuracy or learning rate for every epoch")
            except (KeyError, TypeError, IndexError, ValueError) as error:
                toolbox.fail(f"{name}: results.json lacks a per-epoch history of meta-set "
                             f"CLID, learning rate and test accuracy ({error})")
            rows.append((name + (f" {prefix[:-1]}" if prefix else ""), chosen,
                         {"val": val, "test": test}))
    return rows


def main(argv: Sequence[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    print(table(rows_of(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
