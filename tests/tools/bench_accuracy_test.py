"""tools/bench_accuracy.py: the matrix, command lines, aggregation, report, and one real run."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

TOOL = os.path.join(ROOT, "tools", "bench_accuracy.py")


import bench_accuracy as bench  # noqa: E402  tools/ is on the path (pytest.ini)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _row(method="clid", meta_net="wnet", noise="sym", rate=0.4, seed=0, status="ok",
         **values) -> dict:
    run = bench.Run(bench.Setting(method, meta_net, noise, rate), seed)
    numbers = {column: values.get(column, None if column.startswith("val_") else 0.5)
               for column in bench.RESULT_KEYS}
    if status != "ok":
        return bench.result_row(run, None, status=status, error="boom")
    return bench.result_row(run, numbers)


# ------------------------------------------------------------------------- the matrix

def test_ce_runs_once_per_noise_setting_not_per_meta_net():
    noises = bench.parse_noises(["sym:0.4", "pair:0.2"])
    settings = bench.build_settings(["ce", "clid", "entropy"], ["wnet", "vri"], noises)
    assert len(settings) == 2 * (1 + 2 * 2)
    ce = [s for s in settings if s.method == "ce"]
    assert [(s.noise, s.rate, s.meta_net) for s in ce] == [("sym", 0.4, "-"),
                                                            ("pair", 0.2, "-")]
    assert {(s.method, s.meta_net) for s in settings if s.noise == "pair"} == {
        ("ce", "-"), ("clid", "wnet"), ("clid", "vri"), ("entropy", "wnet"),
        ("entropy", "vri")}
    runs = bench.build_runs(settings, [0, 1, 2])
    assert len(runs) == 30 and len({run.name for run in runs}) == 30
    assert runs[0].workdir("/out") == "/out/sym-0.4-ce/seed0"
    assert runs[8].workdir("/out") == "/out/sym-0.4-clid-vri/seed2"


def test_default_matrix_has_60_runs():
    settings = bench.build_settings(
        ["ce", "ce_clean", "ce_noisy", "clid", "entropy"], ["wnet"],
        bench.parse_noises(["sym:0.4", "sym:0.6", "pair:0.4", "instance:0.4"]))
    assert len(bench.build_runs(settings, [0, 1, 2])) == 60


def test_command_line():
    run = bench.Run(bench.Setting("clid", "vri", "pair", 0.4), 2)
    args = bench.command(run, out="/out", flagfile="/repo/flags/base.cfg",
                         extra=["--epochs=2", "--verbose=2"])
    assert args[:3] == [sys.executable, "-m", "clid_tf.train"]
    assert args[3:] == ["--flagfile=/repo/flags/base.cfg", "--method=clid", "--noise=pair",
                        "--noise_rate=0.4", "--seed=2", "--meta_net=vri", "--verbose=0",
                        "--export=none", "--epochs=2", "--verbose=2",
                        "--workdir=/out/pair-0.4-clid-vri/seed2"]
    ce = bench.Run(bench.Setting("ce", "-", "sym", 0.6), 0)
    ce_args = bench.command(ce, out="/out", flagfile="f.cfg", extra=[])
    assert not any(a.startswith("--meta_net") for a in ce_args)
    assert "--method=ce" in ce_args and ce_args[-1] == "--workdir=/out/sym-0.6-ce/seed0"


def test_extra_flags_are_rejoined_and_checked():
    assert bench.parse_extra(["--epochs=2", "--lr_milestones=10", "20", "--export=none"]) == [
        "--epochs=2", "--lr_milestones=10,20", "--export=none"]
    for bad in (["epochs=2"], ["--seed=1"], ["--method=ce"], ["--flagfile=x.cfg"]):
        with pytest.raises(bench.BenchError):
            bench.parse_extra(bad)


@pytest.mark.parametrize("items", [["sym"], ["bogus:0.4"], ["sym:x"], ["sym:1.5"]])
def test_bad_noise_items_are_refused(items):
    with pytest.raises(bench.BenchError):
        bench.parse_noises(items)


def test_choices_and_seeds():
    assert bench.parse_noises(["sym:0.4", "sym:0.40"]) == [("sym", 0.4)]
    assert bench.parse_seeds(["3", "1", "3"]) == [3, 1]
    with pytest.raises(bench.BenchError):
        bench.parse_seeds(["a"])
    with pytest.raises(bench.BenchError):
        bench.check_choices("meta_nets", ["wnet", "mlp"], bench.META_NETS)


# --------------------------------------------------------------- output folder, resume

def test_non_empty_out_is_refused_unless_resuming(tmp_path):
    bench.check_out(str(tmp_path / "new"), resume=False)  # created
    assert os.path.isdir(tmp_path / "new")
    (tmp_path / "new" / "results.csv").write_text("x")
    with pytest.raises(bench.BenchError, match="not empty"):
        bench.check_out(str(tmp_path / "new"), resume=False)
    bench.check_out(str(tmp_path / "new"), resume=True)


def test_tool_refuses_non_empty_out_with_one_line(tmp_path):
    (tmp_path / "old.txt").write_text("keep")
    proc = run_tool(f"--out={tmp_path}", "--methods=ce", "--noises=sym:0.4", "--seeds=0")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and "not empty" in lines[0]
    assert os.listdir(tmp_path) == ["old.txt"]


def test_resume_skips_finished_runs_and_clears_interrupted_ones(tmp_path):
    out = str(tmp_path)
    runs = bench.build_runs([bench.Setting("clid", "wnet", "sym", 0.4)], [0, 1, 2])
    finished = runs[0].workdir(out)
    os.makedirs(finished)
    with open(os.path.join(finished, "results.json"), "w") as f:
        json.dump({"final_test_accuracy": 0.9, "best_test_accuracy": 0.95,
                   "selected_accuracy": 0.93, "ensemble3_accuracy": 0.94,
                   "ensemble5_accuracy": 0.92, "realised_noise_rate": 0.36,
                   "train_seconds": 12.5, "history": {}}, f)
    interrupted = runs[1].workdir(out)
    os.makedirs(os.path.join(interrupted, "checkpoints"))
    done, todo = bench.plan(runs, out)
    assert list(done) == [runs[0]] and todo == runs[1:]
    row = done[runs[0]]
    assert row["status"] == "ok" and row["final"] == 0.9 and row["ensemble5"] == 0.92
    assert row["train_seconds"] == 12.5 and row["seed"] == 0 and row["meta_net"] == "wnet"
    bench.clear_workdir(runs[1], out)
    assert not os.path.exists(interrupted)


def test_failed_and_timed_out_runs_are_recorded(tmp_path):
    run = bench.Run(bench.Setting("ce", "-", "sym", 0.4), 0)
    fail = [sys.executable, "-c",
            "import sys; print('noise', file=sys.stderr); "
            "print('error: it broke', file=sys.stderr); sys.exit(3)"]
    row = bench.run_one(run, fail, out=str(tmp_path), timeout=60, env=dict(os.environ))
    assert row["status"] == "failed" and row["error"] == "exit 3: error: it broke"
    assert row["final"] is None
    assert "error: it broke" in open(run.log_path(str(tmp_path))).read()
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    row = bench.run_one(run, slow, out=str(tmp_path), timeout=1, env=dict(os.environ))
    assert row["status"] == "timeout"


# ------------------------------------------------------------------ aggregate, format

def test_aggregate_matches_numpy():
    rng = np.random.default_rng(0)
    rows, want = [], {}
    for method, meta_net in (("ce", "-"), ("clid", "wnet")):
        values = {c: rng.uniform(0.5, 1.0, 3) for c in ("final", "best", "selected",
                                                         "ensemble5")}
        values["realised_noise_rate"] = rng.uniform(0.3, 0.4, 3)
        want[method] = values
        for seed in range(3):
            rows.append(_row(method, meta_net, seed=seed,
                             **{c: float(v[seed]) for c, v in values.items()}))
    rows.append(_row("clid", "wnet", seed=3, status="failed"))
    groups = bench.aggregate(rows)
    assert [(g.method, g.meta_net, g.num_ok, g.num_runs) for g in groups] == [
        ("ce", "-", 3, 3), ("clid", "wnet", 3, 4)]
    for group in groups:
        values = want[group.method]
        for column in ("final", "best", "selected", "ensemble5"):
            mean, std = group.stats[column]
            np.testing.assert_allclose(mean, np.mean(values[column]), rtol=1e-12)
            np.testing.assert_allclose(std, np.std(values[column], ddof=1), rtol=1e-12)
        np.testing.assert_allclose(group.realised_noise_rate,
                                   np.mean(values["realised_noise_rate"]), rtol=1e-12)


def test_markdown_table_format():
    rows = [_row("clid", "wnet", seed=s, final=f, best=0.95, selected=0.93, ensemble5=0.94,
                 realised_noise_rate=0.36)
            for s, f in enumerate([0.90, 0.92, 0.916])]
    rows += [_row("ce", "-", seed=0, final=0.8), _row("ce", "-", seed=1, status="failed")]
    lines = bench.markdown_table(bench.aggregate(rows)).splitlines()
    assert lines[0] == ("| noise | rate | method | meta-net | last | best (oracle) | "
                        "CLID-selected | CLID top-5 ensemble | seeds | realised noise |")
    assert re.fullmatch(r"\|(-{3}:?\|){10}", lines[1])
    std = np.std([0.90, 0.92, 0.916], ddof=1)
    assert lines[2] == (f"| sym | 0.4 | clid | wnet | 0.912 ± {std:.3f} | 0.950 ± 0.000 | "
                        "0.930 ± 0.000 | 0.940 ± 0.000 | 3 | 0.360 |")
    assert lines[3] == ("| sym | 0.4 | ce | - | 0.800 | 0.500 | 0.500 | 0.500 | 1/2 | "
                        "0.500 |")
    assert bench.format_mean_std((0.9123, 0.0114), 3) == "0.912 ± 0.011"
    assert bench.format_mean_std(None, 0) == "-"


def test_markdown_table_shows_val_columns_only_for_runs_with_a_val_split():
    rows = [_row("clid", "wnet", seed=s, val_final=v, val_best=0.7, val_selected=0.68)
            for s, v in enumerate([0.6, 0.64])]
    lines = bench.markdown_table(bench.aggregate(rows)).splitlines()
    assert lines[0].endswith("| val last (noisy) | val best (noisy) | "
                             "val at CLID-selected (noisy) | seeds | realised noise |")
    std = np.std([0.6, 0.64], ddof=1)
    assert f"| 0.620 ± {std:.3f} | 0.700 ± 0.000 | 0.680 ± 0.000 | 2 |" in lines[2]


def test_report_lists_failed_runs_and_header():
    rows = [_row("ce", "-", seed=0), _row("ce", "-", seed=1, status="failed")]
    header = bench.header_line(flagfile="flags/digits_common.cfg", extra=["--epochs=2"],
                               seeds=[0, 1])
    assert "flags/digits_common.cfg" in header and "--epochs=2" in header
    assert "seeds: 0,1" in header and f"{os.cpu_count()} CPUs" in header
    text = bench.report(rows, header=header)
    assert header in text and "- sym-0.4-ce/seed1: failed: boom" in text


def test_progress_line():
    assert bench.progress_line(12, 60, failed=0, eta=840, width=10) == (
        "[##--------] 12/60 runs, eta 14m")
    assert bench.progress_line(0, 4, failed=0, eta=None, width=4) == "[----] 0/4 runs, eta ?"
    assert bench.progress_line(4, 4, failed=1, eta=0, width=4) == "[####] 4/4 runs, 1 failed"
    assert bench.format_duration(45) == "45s"
    assert bench.format_duration(7500) == "2h05m"


# ------------------------------------------------------------------ real end-to-end run

@pytest.fixture(scope="module")
def finished_benchmark(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "out")
    proc = run_tool(f"--out={out}", "--methods=ce,clid", "--noises=sym:0.4", "--seeds=0",
                    "--extra=--epochs=2,--warmup_epochs=1,--meta_size=100")
    return out, proc


def test_end_to_end_tiny_benchmark(finished_benchmark):
    out, proc = finished_benchmark
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert [(r["method"], r["meta_net"]) for r in rows] == [("ce", "-"), ("clid", "wnet")]
    for row in rows:
        assert row["status"] == "ok", row
        for column in ("final", "best", "selected", "ensemble3", "ensemble5",
                       "realised_noise_rate"):
            assert 0.0 <= float(row[column]) <= 1.0, (column, row)
        assert float(row["final"]) <= float(row["best"])
    markdown = open(os.path.join(out, "results.md")).read()
    assert "| noise | rate | method | meta-net | last |" in markdown
    assert re.search(r"^\| sym \| 0\.4 \| clid \| wnet \| 0\.\d{3} \|", markdown, re.M)
    assert re.search(r"^\| sym \| 0\.4 \| ce \| - \| 0\.\d{3} \|", markdown, re.M)
    assert markdown in proc.stdout
    assert "2/2 runs" in proc.stderr


def test_end_to_end_resume_skips_finished_runs(finished_benchmark):
    out, first = finished_benchmark
    assert first.returncode == 0, first.stderr[-3000:]
    logs = {path: os.path.getmtime(path) for path in
            (os.path.join(out, cell, "seed0.log") for cell in ("sym-0.4-ce",
                                                               "sym-0.4-clid-wnet"))}
    csv_before = open(os.path.join(out, "results.csv")).read()
    proc = run_tool(f"--out={out}", "--resume", "--methods=ce,clid", "--noises=sym:0.4",
                    "--seeds=0", "--extra=--epochs=2,--warmup_epochs=1,--meta_size=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {path: os.path.getmtime(path) for path in logs} == logs  # nothing ran again
    assert open(os.path.join(out, "results.csv")).read() == csv_before
