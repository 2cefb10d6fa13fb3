"""results.json of a run and what it exports, from its label-free selections.

One network (the meta trainers, FixMatch's EMA network): `exported_networks` picks the
networks --export serves (the lowest-CLID epoch, the top-k ensemble, or the last weights)
and `single_network` reports the accuracies. Several networks trained together
(DivideMix's two, each with its own selection): `exported_members` and `several_networks`,
on top of `two_nets.TwoNetEvaluation`. Test labels are read only to report accuracies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clid_tf.data import splits
from clid_tf.evaluation import two_nets


def sizes(setup) -> dict:
    """The sizes of the training, validation and test parts."""
    ds = setup.dataset
    return {"num_train": int(len(setup.train_indices)),
            "num_val": (int(len(setup.val_indices)) if setup.val_indices is not None
                        else 0 if ds.val is None else int(len(ds.val.labels))),
            "num_test": 0 if ds.test is None else int(len(ds.test.labels))}


def _history(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "step_time"}  # wall-clock


def _val_accuracies(history: dict, selected_epoch: int) -> dict:
    """Accuracies against the val split's labels: the noisy labels of a held-out part, a
    user's own for a val folder or x_val."""
    val = history.get("val_accuracy")
    if not val:
        return {}
    return {"final_val_accuracy": val[-1], "best_val_accuracy": max(val),
            "selected_val_accuracy": val[selected_epoch - 1]}


# ---------------------------------------------------------------- one network
def exported_networks(selection, kind: str, *, keep: int, last, last_epoch: int):
    """(networks, their 1-based epochs) that --export=`kind` serves: 'selected' the
    lowest-CLID epoch, 'ensemble' the `keep` lowest (logits averaged), 'last' the network
    `last` as it ends (epoch `last_epoch`), 'none' nothing."""
    if kind == "none":
        return [], []
    if kind == "last":
        return [last], [last_epoch]
    k = 1 if kind == "selected" else min(keep, len(selection.store))
    return selection.members(k), selection.store.best_epochs(k)


def single_network(setup, selection, history: dict, *, export: str,
                   exported: Sequence[int]) -> dict:
    """results.json of one network: final, best (oracle), selected and ensemble test
    accuracies (when a test split exists), the exported epochs and their accuracy, the
    val accuracies, the noise report, the sizes and the per-epoch history."""
    ds = setup.dataset
    summary = selection.summary()
    results = {"selected_epoch": summary["selected_epoch"], "kept": summary["kept"],
               "eligible_epochs": summary["eligible_epochs"],
               "eligible_from": summary["eligible_from"],
               "class_names": list(ds.class_names), "export": export,
               "exported_epochs": list(exported)}
    accuracy = summary.get("test_accuracy")
    if accuracy:
        best = int(np.argmax(accuracy))
        results.update(final_test_accuracy=accuracy[-1], best_test_accuracy=accuracy[best],
                       best_epoch=best + 1,
                       **{k: summary[k] for k in ("selected_accuracy", "ensemble3_accuracy",
                                                  "ensemble5_accuracy")})
        if export == "last":
            results["exported_test_accuracy"] = accuracy[-1]
        elif exported:  # the argmax of the exported epochs' summed test logits
            results["exported_test_accuracy"] = selection.store.ensemble_accuracy(
                ds.test.labels, len(exported))
    results.update(_val_accuracies(history, summary["selected_epoch"]))
    results.update(**splits.noise_report(setup), **sizes(setup),
                   num_meta=0 if setup.meta_indices is None else int(len(setup.meta_indices)),
                   meta_split=setup.meta_split, history=_history(history))
    return results


# ---------------------------------------------------------------- several networks
def exported_members(selections, kind: str, *, keep: int, last: Sequence):
    """The networks --export=`kind` serves for networks trained together: 'last' the
    networks `last` as they end, 'selected' each network at its own lowest-CLID epoch,
    'ensemble' the `keep` lowest-CLID (network, epoch) entries of all pools; none for
    'none'. Their logits are averaged when served."""
    if kind == "none":
        return []
    if kind == "last":
        return list(last)
    if kind == "selected":
        return two_nets.selected_pair(selections)
    return two_nets.merged_members(selections, keep)


def several_networks(setup, selections, evaluation: two_nets.TwoNetEvaluation,
                     history: dict, *, export: str, num_meta: Sequence[int]) -> dict:
    """results.json of networks trained together: the one-network keys for their summed
    logits (final/best = this epoch's sum, selected = each at its lowest-CLID epoch,
    ensembles over the merged pools), each network's own selection under net1, net2, ...,
    and the history (division and loss terms included)."""
    ds = setup.dataset
    merged = evaluation.summary()
    best = merged["kept"][0]
    results = {"selected_epoch": best["epoch"], "selected_net": best["net"],
               "selected": merged["selected"], "kept": merged["kept"],
               "eligible_epochs": selections[0].summary()["eligible_epochs"],
               "eligible_from": selections[0].eligible_from,
               "class_names": list(ds.class_names), "export": export}
    accuracy = history.get("test_accuracy")
    if accuracy:
        top = int(np.argmax(accuracy))
        results.update(final_test_accuracy=accuracy[-1], best_test_accuracy=accuracy[top],
                       best_epoch=top + 1, **{k: merged[k] for k in (
                           "selected_accuracy", "merged_selected_accuracy",
                           "ensemble3_accuracy", "ensemble5_accuracy")})
    for k, selection in enumerate(selections):
        summary = selection.summary()
        results[f"net{k + 1}"] = {key: summary[key] for key in (
            "selected_epoch", "kept", "selected_accuracy", "ensemble3_accuracy",
            "ensemble5_accuracy") if key in summary}
        if "test_accuracy" in summary:
            results[f"net{k + 1}"]["final_test_accuracy"] = summary["test_accuracy"][-1]
    results.update(_val_accuracies(history, best["epoch"]))
    results.update(**splits.noise_report(setup), **sizes(setup),
                   num_meta=[int(n) for n in num_meta], history=_history(history))
    return results
