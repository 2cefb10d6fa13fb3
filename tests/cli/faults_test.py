"""Faults injected for real into command-line runs (tools/fault_probe.py's cases): two
writers on one folder, an audit of a killed run then its resume, inputs changed under a
resume, and a full disk. Each checks the exit code, the one `error:` line and what is left
on disk. Damaged checkpoints, corrupt images and impossible inputs are tested closer to
their code (tests/runs/run_state_test.py, tests/cli/failures_test.py,
tests/cli/own_data_test.py, tests/data)."""

import json
import os

import pytest

import fault_probe as probe


@pytest.mark.slow  # covered by the lock itself: runs/folder_test.py::test_a_second_writer_is_refused_naming_the_holder...
def test_two_writers_on_one_folder(tmp_path):
    """While a run trains, a second run and a writing audit on its folder each exit 2 with
    one line naming the run's process; the first run finishes with its own files."""
    rows = dict(probe.case_two_writers(str(tmp_path)))
    for case in ("a second run on the folder of a run that is training",
                 "an audit of a run that is training"):
        outcome = rows[case]
        assert outcome.exit_code == 2, outcome
        assert outcome.message.startswith("error: ") and "is in use by pid" in outcome.message
    first = rows["the first run, afterwards"]
    assert first.exit_code == 0 and first.message.startswith("look at it:"), first
    workdir = os.path.join(str(tmp_path), "two_writers")
    assert "--seed=0" in open(os.path.join(workdir, "flags.cfg")).read()
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["flags"]["seed"] == 0 and "audit" not in results


def test_an_audit_of_a_killed_run_leaves_it_resumable(tmp_path):
    rows = probe.case_audit_then_resume(str(tmp_path))
    (_, audited), (_, resumed) = rows
    workdir = os.path.join(str(tmp_path), "audit_then_resume")
    assert audited.exit_code == 0, audited
    assert "audit.csv" in audited.left and "audit.json" in audited.left
    assert "results.json" not in audited.left  # the training's to write
    assert resumed.exit_code == 0, resumed
    assert os.path.isfile(os.path.join(workdir, "results.json"))
    summary = json.load(open(os.path.join(workdir, "audit.json")))
    assert summary["run_finished"] is False and summary["epochs"] == [1, 2]


def test_changed_inputs_refuse_a_resume_by_name_and_logging_flags_do_not(tmp_path):
    rows = dict(probe.case_changed_inputs(str(tmp_path)))
    zeros = rows["--resume with x_train replaced by zeros"]
    assert zeros.exit_code == 2 and "the training inputs changed since the run started" in \
        zeros.message, zeros
    shorter = rows["--resume with the test split shortened"]
    assert shorter.exit_code == 2 and "the test inputs changed" in shorter.message, shorter
    logging_flag = rows["--resume with --alsologtostderr (a logging flag)"]
    assert logging_flag.exit_code == 0, logging_flag


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(tmp_path):
    (_, full), (_, resumed) = probe.case_full_disk(str(tmp_path))
    assert full.exit_code == 2, full
    assert full.message.startswith("error: could not write to") and \
        "No space left on device" in full.message and "is kept" in full.message, full
    assert "0 temporary files" in full.left, full.left
    assert resumed.exit_code == 0, resumed  # (the disk may be unmounted by now: `left`)
    assert "results.json" in resumed.left and "0 temporary files" in resumed.left
