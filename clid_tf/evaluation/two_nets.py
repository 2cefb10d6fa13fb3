"""Evaluation of DivideMix's two networks: the summed logits every epoch,
and what the label-free CLID selection of each network makes of its epochs.

Each network has its own `selection.ClidSelection` (its own meta set, prefix 'net1_' /
'net2_'), which logs that network's test accuracy, lowest-CLID epoch and top-3/top-5
ensembles. `TwoNetEvaluation` adds, from the logits those two computed:

  test_accuracy              argmax(z1 + z2) of this epoch (DivideMix's prediction)
  selected_accuracy          each network at its own lowest-CLID epoch, logits summed
                             (what --export=selected serves)
  merged_selected_accuracy   the single lowest-CLID (network, epoch) of both pools
  ensemble3/5_accuracy       the 3 / 5 lowest-CLID (network, epoch) entries of both pools,
                             logits summed (`best_results_dict_double` in
                             ruofanhu/CLID-MU@5cd0608, sota/utils.py; what --export=ensemble
                             serves)

Test labels are read only to report; epochs are ranked by meta-set CLID alone.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from clid_tf.evaluation import selection as selection_lib


class TwoNetEvaluation(keras.callbacks.Callback):
    """Per-epoch two-network accuracies; put it after both selections, before the loggers.

    Args:
      selections: the two networks' `ClidSelection` callbacks (earlier in the list).
      test_labels: int [N] labels of their test part, or None (no test split).
    """

    def __init__(self, selections: Sequence[selection_lib.ClidSelection],
                 test_labels: np.ndarray | None):
        super().__init__()
        self.selections = list(selections)
        self.test_labels = None if test_labels is None else np.asarray(test_labels)

    def on_epoch_end(self, epoch, logs=None):
        if self.test_labels is None or logs is None:
            return
        summed = sum(s.last_test_logits.astype(np.float64) for s in self.selections)
        logs["test_accuracy"] = selection_lib.accuracy(summed, self.test_labels)
        if all(len(s.store) for s in self.selections):  # after the first eligible epoch
            logs.update(self.accuracies())

    def accuracies(self) -> dict[str, float]:
        """The selected, merged-selected and merged-ensemble accuracies so far."""
        stores = [s.store for s in self.selections]
        pair = sum(s.store.ensemble_logits(1) for s in self.selections)
        found = {"selected_accuracy": selection_lib.accuracy(pair, self.test_labels)}
        for name, k in (("merged_selected_accuracy", 1), ("ensemble3_accuracy", 3),
                        ("ensemble5_accuracy", 5)):
            found[name] = selection_lib.accuracy(
                selection_lib.merged_ensemble_logits(stores, k), self.test_labels)
        return found

    def summary(self) -> dict:
        """The merged selection (net numbers 1-based) and, with a test split, the
        accuracies (the per-epoch two-network test accuracy is in the run's history)."""
        stores = [s.store for s in self.selections]
        merged = selection_lib.merged_top_k(stores, sum(len(s) for s in stores))
        found = {
            "selected": {f"net{i + 1}": s.store.best_epochs(1)[0]
                         for i, s in enumerate(self.selections)},
            "kept": [{"net": i + 1, "epoch": e.epoch, "meta_clid": e.score} for i, e in merged],
        }
        if self.test_labels is not None:
            found.update(self.accuracies())
        return found


def selected_pair(selections: Sequence[selection_lib.ClidSelection]) -> list[keras.Model]:
    """Copies of the two networks at their own lowest-CLID epochs."""
    return [s.members(1)[0] for s in selections]


def merged_members(selections: Sequence[selection_lib.ClidSelection],
                   k: int) -> list[keras.Model]:
    """Copies of the networks of the k lowest-CLID (network, epoch) entries of both pools."""
    members = []
    for i, entry in selection_lib.merged_top_k([s.store for s in selections], k):
        clone = keras.models.clone_model(selections[i].backbone)
        selections[i].load_weights(clone, entry.epoch)
        members.append(clone)
    return members
