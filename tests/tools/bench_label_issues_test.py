"""The parts of tools/bench_label_issues.py that need no cleanlab (a benchmark-only
dependency) and no training: the flips in audit.npz's order, and the table."""

import csv

import numpy as np

import bench_label_issues as bench


def test_flips_follow_the_samples_not_the_csv_rank_order(tmp_path):
    path = tmp_path / "audit.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["rank", "sample", "is_flipped"])
        writer.writeheader()
        for rank, (sample, flipped) in enumerate(((7, 1), (2, 0), (5, 1), (0, 0))):
            writer.writerow({"rank": rank + 1, "sample": sample, "is_flipped": flipped})
    got = bench.flips_of(str(path), np.array([0, 2, 5, 7]))
    np.testing.assert_array_equal(got, [False, False, True, True])


def test_table_has_every_audit_and_cleanlab_row_with_seconds():
    row = {"roc_auc": 0.9, "precision": 0.8, "recall": 0.7, "estimated_noise_rate": 0.3,
           "true_noise_rate": 0.25, "seconds": 12.34}
    runs = [{name: row for name in (*bench.AUDITS, *bench.CLEANLAB)},
            {name: {**row, "roc_auc": 0.8} for name in (*bench.AUDITS, *bench.CLEANLAB)}]
    text = bench.table({"sym:0.5": runs}, folds=3, base_flagfile="flags/digits_sym40.cfg",
                       extra=["--epochs=3"], seeds=["0", "1"])
    lines = [line for line in text.splitlines() if line.startswith("| sym:0.5 ")]
    assert len(lines) == len(bench.AUDITS) + len(bench.CLEANLAB)
    assert ("| sym:0.5 | cleanlab + out-of-sample CE probs | 0.850 +- 0.071 | 0.800 +- 0.000 "
            "| 0.700 +- 0.000 | 0.300 +- 0.000 | 0.250 +- 0.000 | 12.3 +- 0.0 |") in text
    assert text.startswith("3-fold cross-fitting, flags/digits_sym40.cfg + --epochs=3; "
                           "mean +- std over seeds 0,1")
