"""Flagfiles as the parser reads them: bounded expansion, errors located in a few parses,
and a run's flags.cfg read as data."""

from __future__ import annotations

import time

import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.cli import parsing

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def _flags():
    cli.define_flags()
    with flagsaver.flagsaver():
        yield
    FLAGS.unparse_flags()


def _failure(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parsing.parse_flags(["prog", *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_flagfiles_that_include_another_twice_nested_are_refused_at_once(tmp_path, capsys):
    """Each file includes the next twice: 2**30 lines if expanded. Refused in one line
    within a second, naming the file read again and again."""
    (tmp_path / "f30.cfg").write_text("--epochs=2\n")
    for k in range(29, -1, -1):
        include = f"--flagfile={tmp_path / f'f{k + 1}.cfg'}\n"
        (tmp_path / f"f{k}.cfg").write_text(include * 2)
    started = time.time()
    error = _failure(capsys, f"--flagfile={tmp_path / 'f0.cfg'}")
    assert time.time() - started < 5
    assert error.startswith("error: the flagfiles expand to more than 20000 lines")
    assert "include each file once" in error and "\n" not in error


def test_an_error_among_thousands_of_lines_is_located_in_few_parses(tmp_path, capsys,
                                                                    monkeypatch):
    lines = [f"--epochs={k % 50 + 1}" for k in range(15000)]
    lines[12345] = "--epochs=abc"
    (tmp_path / "long.cfg").write_text("\n".join(lines) + "\n")
    calls = []
    original = FLAGS.__call__
    monkeypatch.setattr(type(FLAGS), "__call__", lambda self, argv, *a, **k: (
        calls.append(len(argv)), original(argv, *a, **k))[1])
    error = _failure(capsys, f"--flagfile={tmp_path / 'long.cfg'}")
    assert f"{tmp_path / 'long.cfg'} line 12346: --epochs=abc: expected" in error
    assert 1 < len(calls) < 40  # a bisection: log2(15000) ~ 14 prefixes, not 12346


def test_a_runs_flags_cfg_is_read_as_data(tmp_path):
    """Training flags become arguments with their line; absl's own flags (which absl writes
    into every flags.cfg) are skipped whatever they say; --flagfile and unknown names are
    refused by line."""
    text = ("--nohelp\n--run_with_pdb\n--profile_file=/tmp/x\n--epochs=7\n"
            "--noaugment_flip\n--noise=sym\n# comment\n")
    args = parsing.run_flag_arguments(text, "RUN/flags.cfg")
    assert [(a.text, a.where) for a in args] == [
        ("--epochs=7", "RUN/flags.cfg line 4"), ("--noaugment_flip", "RUN/flags.cfg line 5"),
        ("--noise=sym", "RUN/flags.cfg line 6")]
    with pytest.raises(ValueError, match="line 2: a run's flags.cfg holds its training flags"):
        parsing.run_flag_arguments("--epochs=1\n--flagfile=/etc/other.cfg\n", "RUN/flags.cfg")
    with pytest.raises(ValueError, match="line 1: unknown flag --no_such_flag"):
        parsing.run_flag_arguments("--no_such_flag=1\n", "RUN/flags.cfg")
    with pytest.raises(ValueError, match="is not a --name=value line"):
        parsing.run_flag_arguments("epochs 3\n", "RUN/flags.cfg")
