"""The parts of tools/bench_find_label_issues.py that need no cleanlab (a benchmark-only
dependency): the detection scores (toolbox's, shared with bench_label_issues.py) against
numpy and the table."""

import numpy as np
import pytest

import bench_find_label_issues as bench
import toolbox


def test_scores_are_auc_precision_recall_and_the_flagged_share():
    flipped = np.array([True, True, False, False, False])
    suspicion = np.array([0.9, 0.2, 0.8, 0.1, 0.0])
    flagged = np.array([True, False, True, False, False])
    got = toolbox.detection_scores(suspicion, flagged, flipped)
    # pairs (flipped, clean) ordered right: (0.9 > all 3), (0.2 > 0.1, 0.0): 5 of 6
    assert got["roc_auc"] == pytest.approx(5 / 6)
    assert (got["precision"], got["recall"]) == (0.5, 0.5)
    assert got["estimated_noise_rate"] == pytest.approx(0.4)


def test_table_has_one_row_per_method_with_mean_and_std():
    row = {"roc_auc": 0.9, "precision": 0.8, "recall": 0.7, "estimated_noise_rate": 0.3,
           "seconds": 10.0}
    other = {**row, "roc_auc": 0.8}
    text = bench.table([{name: row for name in bench.ROWS},
                        {name: other for name in bench.ROWS}], seeds="0,1", rate=0.3, folds=5)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(bench.ROWS)
    assert "| clid_tf CLID-MU | 0.850 +- 0.071 | 0.800 +- 0.000 |" in text
