"""The speed, profile and frontier tools run end to end and print the tables they promise."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SMALL = ["--backbone=small_cnn", "--image_size=8", "--channels=1", "--batch_size=16",
         "--meta_batch_size=8", "--rounds=1", "--steps=1"]


def _table(tool, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *SMALL, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_bench_speed_reports_time_and_memory_ratios_to_the_plain_step():
    rows = _table("bench_speed.py", "--modes=ce,clid_recompute")
    assert [r[0] for r in rows] == ["ce", "clid_recompute"]
    ce, meta = rows
    assert int(ce[4]) > 0 and int(meta[4]) > 0  # peak MiB measured, not "n/a"
    # ratios to the plain step (times are the tool's to report, not this test's to judge)
    assert ce[3] == "1.00x" and ce[5] == "1.00x" and float(meta[3].rstrip("x")) > 0
    assert float(meta[5].rstrip("x")) >= 1.0  # the meta step holds more in memory


@pytest.mark.slow  # the tool's table: test_bench_speed_reports_time_and_memory_ratios...; the step: trainers/fixmatch
def test_bench_speed_times_fixmatch_with_clid_against_plain_fixmatch():
    rows = _table("bench_speed.py", "--modes=fixmatch,flexmatch_clid", "--uratio=2",
                  "--memory=false")
    assert [r[0] for r in rows] == ["fixmatch", "flexmatch_clid"]
    assert rows[0][3] == "1.00x" and float(rows[1][3].rstrip("x")) > 0


def test_profile_meta_step_reports_every_stage_with_memory():
    rows = _table("profile_meta_step.py")
    assert [r[0][0] for r in rows[:5]] == list("12345")
    assert rows[5][0].startswith("plain ce train_step")
    assert all(len(r) == 6 and float(r[4]) > 0 for r in rows)  # peak MiB for every stage
    # cumulative prefixes: the full meta step takes longer than its forward alone
    assert float(rows[4][1]) > float(rows[0][1])


def _run_frontier(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_frontier.py"),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("|")]
    return proc, rows[2:]


def test_bench_frontier_times_a_top_n_meta_every_setting_against_the_plain_step():
    proc, rows = _run_frontier("--accuracy=false", "--backbones=resnet32", "--image_size=8",
                               "--channels=1", "--batch_size=8", "--meta_batch_size=8",
                               "--rounds=1", "--steps=1", "--settings=top:1+meta_every=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r[0] for r in rows] == ["ce", "top:1+meta_every=2"]
    # tiny steps on a shared CPU: only the form of the ratio is stable enough to assert
    assert rows[0][2] == "1.00x" and float(rows[1][1]) > 0 and rows[1][2].endswith("x")
    assert "median of 1 rounds x 2 steps" in proc.stdout  # whole meta_every periods
    bad, _ = _run_frontier("--accuracy=false", "--settings=top:0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: --settings item 'top:0': meta scope must be")


@pytest.mark.slow  # the CLI runs: bench_accuracy_test; the timing table: test_bench_frontier_times...
def test_bench_frontier_trains_each_setting_through_the_cli(tmp_path):
    proc, rows = _run_frontier(
        "--timing=false", "--accuracy_backbone=small_cnn", "--settings=meta_every=2",
        f"--out={tmp_path}", "--seeds=0", "--parallel=2",
        "--extra=--epochs=1,--warmup_epochs=0,--steps_per_epoch=2,--meta_size=16,"
        "--meta_batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r[0] for r in rows] == ["ce", "meta_every=2"]
    assert all(0.0 <= float(r[1]) <= 1.0 and 0.0 <= float(r[2]) <= 1.0 and r[4] == "1/1"
               for r in rows)
    with open(tmp_path / "every2" / "sym-0.4-clid-wnet" / "seed0" / "results.json") as f:
        flags_of_run = json.load(f)["flags"]
    assert flags_of_run["meta_every"] == 2 and flags_of_run["backbone"] == "small_cnn"


def test_choose_hparams_picks_by_the_held_out_score_never_by_test_accuracy():
    import choose_hparams  # pylint: disable=import-outside-toplevel  # tools/: pytest.ini
    means = [{"val_final": 0.80, "val_selected": 0.9, "final": 0.99, "selected": 0.99},
             {"val_final": 0.85, "val_selected": 0.7, "final": 0.50, "selected": 0.50},
             {"val_final": 0.85, "val_selected": 0.8, "final": 0.60, "selected": 0.60},
             {"val_final": float("nan"), "val_selected": 1.0, "final": 1.0, "selected": 1.0}]
    assert choose_hparams.chosen(means, "val_final") == 1  # tie -> the earlier point
    assert choose_hparams.chosen(means, "val_selected") == 3
    with pytest.raises(ValueError, match="not a held-out score"):
        choose_hparams.chosen(means, "final")


@pytest.mark.slow  # the tool's table: test_bench_speed_reports_time_and_memory_ratios...; the step: trainers/dividemix
def test_bench_speed_times_dividemix_with_vri_and_clid_against_plain_dividemix():
    rows = _table("bench_speed.py", "--modes=dividemix,dividemix_vri,dm_targets",
                  "--memory=false")
    assert [r[0] for r in rows] == ["dividemix", "dividemix_vri", "dm_targets"]
    assert rows[0][3] == "1.00x" and float(rows[1][1]) > 0 and float(rows[2][1]) > 0
    assert float(rows[1][3].rstrip("x")) > 1.0  # the meta step costs time
