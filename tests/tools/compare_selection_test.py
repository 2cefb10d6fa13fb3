"""tools/compare_selection.py: both rules' picks re-ranked from a results.json by hand."""

import json
import os
import subprocess
import sys

import compare_selection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(folder, history, **extra):
    os.makedirs(folder)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"history": history, **extra}, f)
    return str(folder)


def test_every_epoch_and_lowest_rate_picks_against_the_last_epoch(tmp_path):
    # a step schedule: epochs 3-5 at the lower rate; the lowest CLID overall is epoch 2,
    # the lowest among 3-5 is epoch 4
    one = _run(tmp_path / "one", {
        "lr": [0.1, 0.1, 0.01, 0.01, 0.01], "meta_set_clid": [4.6, 4.0, 4.3, 4.1, 4.2],
        "val_accuracy": [0.3, 0.4, 0.5, 0.6, 0.7], "test_accuracy": [0.5, 0.6, 0.7, 0.8, 0.9]},
        eligible_from=1)
    # DivideMix: two networks, a warm-up epoch kept out, an old results.json ([first, last])
    two = _run(tmp_path / "two", {
        "net1_lr": [0.1, 0.05, 0.02], "net2_lr": [0.1, 0.05, 0.02],
        "net1_meta_set_clid": [3.0, 4.1, 4.2], "net2_meta_set_clid": [3.0, 4.2, 4.1],
        "net1_test_accuracy": [0.1, 0.8, 0.9], "net2_test_accuracy": [0.1, 0.85, 0.95],
        "val_accuracy": [0.2, 0.5, 0.6]}, eligible_epochs=[2, 3])
    rows = compare_selection.rows_of([one, two])
    assert [(name, r["all"], r["lowest_lr"], r["eligible"]) for name, r, _ in rows] == [
        (one, 2, 4, [3, 4, 5]), (two + " net1", 2, 3, [3]), (two + " net2", 3, 3, [3])]
    assert rows[1][2]["val"] is None  # a network of a pair has no held-out accuracy alone
    text = compare_selection.table(rows)
    assert f"| {one} | 2 | 4 (3) | 0.700 / 0.400 / 0.600 | 0.900 / 0.600 / 0.800 | 0.900 |" in text
    # val gaps: one run only (-30, -10); test gaps: (-30, -10), (-10, 0), (0, 0)
    assert "| all | -30.00 (-30.00) | -13.33 (-30.00) |" in text
    assert "| lowest_lr | -10.00 (-10.00) | -3.33 (-10.00) |" in text


def test_a_folder_without_results_or_history_is_one_error_line(tmp_path):
    bad = _run(tmp_path / "bad", {"loss": [1.0]})
    for folder in (str(tmp_path / "missing"), bad):
        proc = subprocess.run([sys.executable, "tools/compare_selection.py", folder],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {folder}")
        assert "Traceback" not in proc.stderr
