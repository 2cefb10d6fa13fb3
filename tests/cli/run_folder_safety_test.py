"""Nothing outside the run folder is ever touched: a run folder's files are data, never
flags or code. Each test reproduces a way a mistaken or hostile input used to delete or
overwrite a file outside the folder, or run code, and checks that the file is intact
afterwards, nothing ran, and the command said why in one line."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers.cli import assert_one_line_error, run_cli

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "run_before_layout")  # killed after epoch 2


def _killed_run(tmp_path):
    """A copy of an unfinished digits run (3 epochs, killed after its epoch-2 checkpoint)."""
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE, workdir)
    (workdir / "uninterrupted.json").unlink()
    return workdir


def _victim(tmp_path, name="victim.txt", text="a user's own file\n"):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    path = outside / name
    path.write_text(text)
    return path


def test_resume_of_a_folder_that_holds_no_run_touches_nothing(tmp_path):
    """A mistyped --resume --workdir=~/thesis: every file stays (temporary-looking names
    included, anywhere in the tree), no lock file is left, one error line."""
    thesis = tmp_path / "thesis"
    (thesis / "chapter" / "draft_temp").mkdir(parents=True)
    files = {thesis / "notes.txt": "notes", thesis / "draft.tmp": "unsaved draft",
             thesis / "chapter" / "fig.tmp": "a figure",
             thesis / "chapter" / "draft_temp" / "a.txt": "a", thesis / "flags.cfg": "x"}
    for path, text in files.items():
        path.write_text(text)
    before = sorted(str(p.relative_to(thesis)) for p in thesis.rglob("*"))
    proc = run_cli(f"--workdir={thesis}", "--resume", "--verbose=0")
    assert_one_line_error(proc, "holds files that are not a training run's")
    assert sorted(str(p.relative_to(thesis)) for p in thesis.rglob("*")) == before
    for path, text in files.items():
        assert path.read_text() == text


@pytest.mark.parametrize("saved", [False, True])
def test_resume_trusts_no_checkpoint_index_naming_files_outside(tmp_path, saved):
    """checkpoints/checkpoint listing paths outside the folder (in a run killed before its
    first checkpoint, or after its second): TensorFlow's manager would delete them as
    checkpoints age. The run resumes from its own ckpt-E files only, the files outside stay,
    and no traceback."""
    workdir = _killed_run(tmp_path)
    if not saved:  # killed before the first epoch was saved
        for path in (workdir / "checkpoints").glob("*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    victims = [_victim(tmp_path, f"victim{k}.index", f"model {k}") for k in range(3)]
    listed = [str(v)[:-len(".index")] for v in victims]
    (workdir / "checkpoints" / "checkpoint").write_text(  # TensorFlow's index format
        f'model_checkpoint_path: "{listed[-1]}"\n'
        + "".join(f'all_model_checkpoint_paths: "{p}"\n' for p in listed)
        + "".join(f"all_model_checkpoint_timestamps: {1.7e9 + k}\n" for k in range(3))
        + "last_preserved_timestamp: 1.6e9\n")
    proc = run_cli(f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("resuming after epoch 2 of 3" in proc.stdout) == saved
    for k, victim in enumerate(victims):
        assert victim.read_text() == f"model {k}"
    index = (workdir / "checkpoints" / "checkpoint").read_text()
    assert "outside" not in index and 'model_checkpoint_path: "ckpt-3"' in index


def test_a_lock_file_linked_elsewhere_is_refused_and_its_target_kept(tmp_path):
    workdir = _killed_run(tmp_path)
    victim = _victim(tmp_path)
    os.symlink(victim, workdir / ".lock")
    proc = run_cli(f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}", "--resume")
    assert_one_line_error(proc, ".lock (a symbolic link)")
    assert victim.read_text() == "a user's own file\n"
    assert os.path.islink(workdir / ".lock")  # refused, not removed: the user sees it


def test_the_audit_reads_flags_cfg_as_data(tmp_path):
    """A flags.cfg line --profile_file=PATH (absl would write profiler output there) or
    --run_with_pdb has no effect on the audit, which runs (in sample, on the run's
    checkpoints); the same lines refuse a resume that reuses flags.cfg with --flagfile."""
    workdir = _killed_run(tmp_path)
    profile = tmp_path / "outside" / "profile.out"
    with open(workdir / "flags.cfg", "a") as f:
        f.write(f"--profile_file={profile}\n--run_with_pdb\n--run_with_profiling\n")
    proc = run_cli(f"--workdir={workdir}", "--audit_folds=0", "--audit_show=0",
                   module="clid_tf.audit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "audit.json").read_text())["folds"] == 0
    proc = run_cli(f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}", "--resume")
    assert_one_line_error(proc, "--profile_file acts (it writes files or stops the run) and "
                                "is taken from the command line only")
    assert not profile.exists()


def _plant(kind: str, workdir, tmp_path):
    """One thing a run never makes, planted in a killed run's folder; returns the files
    outside that it points at (their text must stay)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim.txt"
    victim.write_text("a user's own file\n")
    checkpoints = workdir / "checkpoints"
    if kind == "checkpoints_link":
        shutil.move(checkpoints, outside / "checkpoints")
        (outside / "checkpoints" / "state-7.npz").write_text("a user's own file\n")
        os.symlink(outside / "checkpoints", checkpoints)
        return [outside / "checkpoints" / "state-7.npz"]
    if kind in ("selected_link", "tensorboard_link"):
        target = checkpoints / "selected" if kind == "selected_link" else workdir / "tensorboard"
        if target.exists():
            shutil.rmtree(target)
        (outside / "epoch-5.npz").write_text("a user's own file\n")
        os.symlink(outside, target)
        return [outside / "epoch-5.npz", victim]
    if kind == "tmp_link":
        os.symlink(victim, workdir / "audit.json.tmp")
    elif kind == "lock_hard_link":
        if (workdir / ".lock").exists():
            (workdir / ".lock").unlink()
        os.link(victim, workdir / ".lock")
    elif kind == "flags_link":
        shutil.copy(workdir / "flags.cfg", outside / "flags.cfg")
        (workdir / "flags.cfg").unlink()
        os.symlink(outside / "flags.cfg", workdir / "flags.cfg")
        return [victim]
    elif kind == "split_fifo":
        (workdir / "split.npz").unlink()
        os.mkfifo(workdir / "split.npz")
    elif kind == "checkpoint_fifo":
        data = next(checkpoints.glob("ckpt-2.data-*"))
        data.unlink()
        os.mkfifo(data)
    elif kind == "checkpoints_file":
        shutil.rmtree(checkpoints)
        checkpoints.write_text("x")
    elif kind == "results_folder":
        (workdir / "results.json").mkdir()
    return [victim]


PLANTED = ("checkpoints_link", "selected_link", "tensorboard_link", "tmp_link",
           "lock_hard_link", "flags_link", "split_fifo", "checkpoint_fifo", "checkpoints_file",
           "results_folder")


@pytest.mark.parametrize("kind", PLANTED)
def test_a_folder_holding_what_a_run_never_makes_is_refused_untouched(tmp_path, kind):
    """Links (symbolic or hard), FIFOs, a run folder that is a file or a run file that is a
    folder: `check_is_run` (what --resume and the audit do first) refuses them in one line
    before anything is written, removed or read through them."""
    from clid_tf.runs import folder as run_folder  # pylint: disable=import-outside-toplevel
    workdir = _killed_run(tmp_path)
    victims = {path: path.read_text() for path in _plant(kind, workdir, tmp_path)}
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    with pytest.raises(run_folder.FolderError, match="holds what a run never makes") as err:
        run_folder.RunFolder(str(workdir)).check_is_run()
    assert "\n" not in str(err.value)
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
    assert {path: path.read_text() for path in victims} == victims


@pytest.mark.parametrize("kind,module", [("checkpoints_link", "clid_tf.train"),
                                         ("lock_hard_link", "clid_tf.audit"),
                                         ("checkpoint_fifo", "clid_tf.audit")])
def test_resume_and_audit_refuse_them_in_one_line(tmp_path, kind, module):
    workdir = _killed_run(tmp_path)
    victims = {path: path.read_text() for path in _plant(kind, workdir, tmp_path)}
    args = ([f"--flagfile={workdir / 'flags.cfg'}", "--resume"] if module == "clid_tf.train"
            else ["--audit_folds=0"])
    proc = run_cli(*args, f"--workdir={workdir}", module=module, timeout=120)
    assert_one_line_error(proc, "holds what a run never makes")
    assert {path: path.read_text() for path in victims} == victims


def test_unreadable_run_files_are_one_line(tmp_path):
    """A flags.cfg that is not UTF-8 or is huge, a results.json that is not a JSON object:
    one FolderError line each, never a traceback."""
    from clid_tf.runs import folder as run_folder  # pylint: disable=import-outside-toplevel
    workdir = _killed_run(tmp_path)
    folder = run_folder.RunFolder(str(workdir))
    with open(workdir / "flags.cfg", "ab") as f:
        f.write(b"--note=\xff\xfe\n")
    with pytest.raises(run_folder.FolderError, match="is not UTF-8 text"):
        folder.read_flags()
    with open(workdir / "flags.cfg", "r+b") as f:
        f.truncate(run_folder.MAX_FLAGS_BYTES + 1)
    with pytest.raises(run_folder.FolderError, match="is larger than"):
        folder.read_flags()
    (workdir / "results.json").write_text("[]")
    with pytest.raises(run_folder.FolderError, match="does not hold a results object"):
        folder.read_results()
    (workdir / "results.json").write_text("{not json")
    with pytest.raises(run_folder.FolderError, match="is unreadable"):
        folder.read_results()


def test_a_resumed_run_prunes_the_checkpoints_it_found(tmp_path):
    """The rebuilt checkpoint index gives the folder's own checkpoints their times, so the
    manager prunes them as its own (3 kept), and no epoch keeps a checkpoint without its
    state file or a state file without its checkpoint."""
    workdir = _killed_run(tmp_path)
    proc = run_cli(f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(os.listdir(workdir / "checkpoints"))
    indexed = sorted(n[:-len(".index")] for n in names if n.endswith(".index"))
    states = sorted(n[len("state-"):-len(".npz")] for n in names if n.startswith("state-"))
    assert [i.split("-")[1] for i in indexed] == states == ["2", "3"]


def test_a_flagfile_line_in_flags_cfg_is_refused(tmp_path):
    workdir = _killed_run(tmp_path)
    other = _victim(tmp_path, "other.cfg", "--epochs=99\n")
    with open(workdir / "flags.cfg", "a") as f:
        f.write(f"--flagfile={other}\n")
    proc = run_cli(f"--workdir={workdir}", "--audit_folds=0", module="clid_tf.audit")
    assert_one_line_error(proc, "holds its training flags, not --flagfile")
    assert not (workdir / "audit.csv").exists()


# ------------------------------------------------------------------ TFDS data folders

_EVIL = "clid_evil_feature_module"


@pytest.mark.parametrize("metadata", ["features.json", "dataset_info.json"])
def test_a_tfds_data_folder_naming_a_foreign_feature_type_runs_no_code(tmp_path, monkeypatch,
                                                                       metadata):
    """A prepared folder whose metadata names a feature class in a module of its choice:
    TFDS would import the module (here one that writes a marker file). Refused in one line
    before TFDS reads the folder; the module never runs."""
    from clid_tf.data.sources import tfds as tfds_images  # pylint: disable=import-outside-toplevel
    from clid_tf.errors import DataError  # pylint: disable=import-outside-toplevel
    marker = tmp_path / "ran.txt"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{_EVIL}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(code))
    version = tmp_path / "data" / "evil_ds" / "1.0.0"
    version.mkdir(parents=True)
    feature = {"type": f"{_EVIL}.Evil", "content": {}}
    if metadata == "features.json":
        (version / "features.json").write_text(json.dumps(
            {"type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
             "content": {"image": feature}}))
        (version / "dataset_info.json").write_text(json.dumps({"name": "evil_ds"}))
    else:
        (version / "dataset_info.json").write_text(json.dumps(
            {"name": "evil_ds", "features": {"pythonClassName": f"{_EVIL}.Evil"}}))
    with pytest.raises(DataError) as err:
        tfds_images.load_tfds_image_classification("evil_ds", data_dir=str(tmp_path / "data"))
    assert f"names the feature type '{_EVIL}.Evil'" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------ the writers themselves

def test_atomic_writes_remove_a_planted_temporary_link_and_write_a_new_file(tmp_path):
    from clid_tf import atomic_io  # pylint: disable=import-outside-toplevel
    victim = _victim(tmp_path)
    target = tmp_path / "results.json"
    os.symlink(victim, f"{target}.tmp")
    atomic_io.write_json(str(target), {"ok": 1})
    assert victim.read_text() == "a user's own file\n"
    assert json.loads(target.read_text()) == {"ok": 1} and not os.path.islink(target)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(atomic_io.NotRegularFileError):
        atomic_io.open_regular(str(tmp_path / "fifo"))  # returns at once, never blocks
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(atomic_io.NotRegularFileError, match="symbolic link"):
        atomic_io.open_regular(str(tmp_path / "link"))


def test_resume_removes_only_the_runs_own_temporary_names(tmp_path):
    """After the checks, a resume removes what its own interrupted writes leave, where it
    writes them: a leftover results.json.tmp, state-3.npz.tmp, ckpt-3_temp/ (a link there
    would have been refused by the checks)."""
    from clid_tf.runs import folder as run_folder  # pylint: disable=import-outside-toplevel
    workdir = _killed_run(tmp_path)
    victim = _victim(tmp_path)
    (workdir / "results.json.tmp").write_text("half")
    (workdir / "checkpoints" / "state-3.npz.tmp").write_text("half")
    (workdir / "checkpoints" / "ckpt-3_temp").mkdir()
    (workdir / "checkpoints" / "ckpt-3_temp" / "part").write_text("half")
    folder = run_folder.RunFolder(str(workdir))
    folder.check_is_run()
    removed = folder.remove_temporary_files()
    assert sorted(os.path.basename(p) for p in removed) == [
        "ckpt-3_temp", "results.json.tmp", "state-3.npz.tmp"]
    assert victim.read_text() == "a user's own file\n"
    assert sorted(os.listdir(workdir)) == ["checkpoints", "flags.cfg", "split.npz"]


def test_each_worker_of_a_multi_worker_run_writes_its_own_folder():
    from clid_tf.runs import folder as run_folder  # pylint: disable=import-outside-toplevel

    def config(kind, index, chief=False):
        cluster = {"worker": ["a:1", "b:1"], **({"chief": ["c:1"]} if chief else {})}
        return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})
    assert run_folder.for_this_worker("/runs/x", config("worker", 0)) == "/runs/x"
    assert run_folder.for_this_worker("/runs/x", config("worker", 1)) == "/runs/x.worker1"
    assert run_folder.for_this_worker("/runs/x", config("chief", 0, chief=True)) == "/runs/x"
    assert run_folder.for_this_worker("/runs/x", config("worker", 0, chief=True)) == (
        "/runs/x.worker0")
    with pytest.raises(run_folder.FolderError, match="TF_CONFIG"):
        run_folder.for_this_worker("/runs/x", None)


def test_dependency_floors_exclude_releases_with_known_vulnerabilities():
    """pillow >= 10.3 (libwebp heap overflow CVE-2023-4863, fixed in 10.0.1, and the later
    ImageMath / ImageCms fixes) and keras >= 3.12 (load_model safe-mode bypasses)."""
    import re  # pylint: disable=import-outside-toplevel
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    floors = dict(re.findall(r'"([a-z_-]+)>=([0-9.]+)', text))
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(floors["pillow"]) >= (10, 3, 0) and as_tuple(floors["keras"]) >= (3, 12, 0)
    assert np.all([as_tuple(v) > (0,) for v in floors.values()])


def test_the_lock_itself_refuses_a_link_or_fifo_and_writes_nothing_through_it(tmp_path):
    """Defence in depth under the folder checks: RunLock opens .lock without following a
    link and only as a regular file with no other name."""
    from clid_tf.runs import lock as run_lock  # pylint: disable=import-outside-toplevel
    victim = _victim(tmp_path)
    for kind in ("symlink", "hardlink", "fifo"):
        folder = tmp_path / kind
        folder.mkdir()
        path = folder / run_lock.LOCK_NAME
        {"symlink": lambda: os.symlink(victim, path), "hardlink": lambda: os.link(victim, path),
         "fifo": lambda: os.mkfifo(path)}[kind]()
        with pytest.raises(run_lock.LockedError, match="is not a regular file of its own"):
            run_lock.RunLock(str(folder)).acquire()
    assert victim.read_text() == "a user's own file\n"
