"""The speed and profile tools run end to end and print the tables they promise."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    # the meta step (virtual, meta and actual step) costs more time and memory than CE
    assert float(meta[3].rstrip("x")) > 1.0 and float(meta[5].rstrip("x")) >= 1.0


def test_profile_meta_step_reports_every_stage_with_memory():
    rows = _table("profile_meta_step.py")
    assert [r[0][0] for r in rows[:5]] == list("12345")
    assert rows[5][0].startswith("plain ce train_step")
    assert all(len(r) == 6 and float(r[4]) > 0 for r in rows)  # peak MiB for every stage
    # cumulative prefixes: the full meta step takes longer than its forward alone
    assert float(rows[4][1]) > float(rows[0][1])
