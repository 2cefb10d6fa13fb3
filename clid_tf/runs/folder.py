"""A run's folder: the one module that knows its layout (no TensorFlow import here).

  RUN/flags.cfg          every flag of the run, reusable with --flagfile
  RUN/split.npz          noisy labels and sample indices, checked again on resume
  RUN/results.json       accuracies, selection, noise report, history, flags
  RUN/checkpoints/       per-epoch checkpoints for resuming (clid_tf.runs.callbacks.RunState)
  RUN/checkpoints/selected/  weights of the lowest-CLID epochs (clid_tf.evaluation.selection)
  RUN/tensorboard/       event files
  RUN/saved_model/       the exported SavedModel
  RUN/audit.csv          the label audit, ranked; RUN/audit.json its summary
  RUN/audit.npz          the audit's probabilities [N, K] and given labels (for other tools)
  RUN/audit.png          the most suspicious samples (audit_classes.png, audit_confusion.png)
  RUN/.lock              the writer's lock (`clid_tf.runs.lock`)

The training CLI, resume and the audit read and write runs only through `RunFolder`, and
only while they hold the folder's lock (`lock`, or `create` for a new run). A folder is a
run's only when it holds nothing but these names (and the temporary names of their
atomic writes, `TEMPORARY`); anything else is refused before a byte is written or removed.
Its files are data: they are read as regular files only (never through a link, never a
FIFO), and what an interrupted write left is removed only by its own names, in the places
the run writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from typing import Iterator

import numpy as np

from clid_tf import atomic_io
from clid_tf.data import inputs as inputs_lib
from clid_tf.runs import lock as run_lock

# What a run writes into its folder (a --resume start may find these, and only these).
RUN_FILES = {"flags.cfg", "split.npz", "results.json", "checkpoints", "tensorboard",
             "saved_model", "saved_model.tmp", "saved_model.old", "audit.csv", "audit.json",
             "audit.npz", "audit.png", "audit_classes.png", "audit_confusion.png",
             run_lock.LOCK_NAME, ".write_test"}
WRITE_TEST = ".write_test"  # the probe `create` writes and removes
# The folders a run makes; every other entry of RUN_FILES is a regular file.
RUN_FOLDERS = ("checkpoints", os.path.join("checkpoints", "selected"), "tensorboard",
               "saved_model")
MAX_FLAGS_BYTES = 1 << 20  # a flags.cfg is a few KB
# The temporary names of the run's own interrupted writes, by the folder they are in
# (relative to the run folder): atomic_io's '<file>.tmp', the export's 'saved_model.tmp' /
# '.old', TensorFlow's checkpoint writes ('ckpt-E_temp...' shards, 'checkpoint.tmp<hex>').
TEMPORARY = {
    ".": re.compile(r"(flags\.cfg|split\.npz|results\.json|audit\.(csv|json|npz|png)|"
                    r"audit_(classes|confusion)\.png)\.tmp|saved_model\.(tmp|old)"),
    "checkpoints": re.compile(r"state-\d+\.npz\.tmp|ckpt-\d+_temp(_\w+)?|"
                              r"checkpoint\.tmp[0-9a-f]*"),
    os.path.join("checkpoints", "selected"): re.compile(r"(net\d+_)?epoch-\d+\.npz\.tmp"),
}
# Flags whose change does not stop a run from resuming.
NOT_SIGNIFICANT = ("resume", "verbose", "verbosity", "workdir", "export", "audit",
                   "audit_folds", "audit_show", "audit_filter")


class FolderError(Exception):
    """A folder that cannot hold, resume or be read as a run: one line for the user."""


class RunFolder:
    """Paths and files of one run in `path`."""

    def __init__(self, path: str):
        self.path = os.path.normpath(os.path.expanduser(path))  # no shell expands '--workdir=~/x'
        self._created = None  # the outermost folder `create` made, removed on a failed start
        self._before: set[str] = set()  # what the folder held before this process wrote
        self._lock = run_lock.RunLock(self.path)
        self.cleared_unfinished = False  # removed_on_failure removed what this run wrote

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def flags_path(self) -> str:
        return self.join("flags.cfg")

    @property
    def results_path(self) -> str:
        return self.join("results.json")

    @property
    def checkpoints(self) -> str:
        return self.join("checkpoints")

    @property
    def selected_weights(self) -> str:
        return self.join("checkpoints", "selected")

    @property
    def tensorboard(self) -> str:
        return self.join("tensorboard")

    @property
    def saved_model(self) -> str:
        return self.join("saved_model")

    @property
    def audit_csv(self) -> str:
        return self.join("audit.csv")

    @property
    def audit_json(self) -> str:
        return self.join("audit.json")

    @property
    def audit_arrays(self) -> str:
        return self.join("audit.npz")

    @property
    def audit_pictures(self) -> dict[str, str]:
        """The audit's pictures: sheet (the most suspicious samples), classes (the most
        confused class pairs beside their least suspicious samples), confusion."""
        return {"sheet": self.join("audit.png"), "classes": self.join("audit_classes.png"),
                "confusion": self.join("audit_confusion.png")}

    # ------------------------------------------------------------ state of the folder
    def has_checkpoint(self) -> bool:
        """Whether any epoch checkpoint was written (intact or not)."""
        return any(re.fullmatch(r"ckpt-\d+\.index", name) for name in _listing(self.checkpoints))

    def last_epoch(self) -> int | None:
        """The newest epoch whose state file (written last) exists, or None."""
        found = [int(m.group(1)) for m in (re.fullmatch(r"state-(\d+)\.npz", name)
                                            for name in _listing(self.checkpoints)) if m]
        return max(found) if found else None

    def remove_temporary_files(self) -> list[str]:
        """Deletes what an interrupted write of this run left: the `TEMPORARY` names in
        the folders the run writes them, nothing else; a link is unlinked, never followed.
        Returns their paths."""
        removed = []
        for where, pattern in TEMPORARY.items():
            folder = os.path.normpath(self.join(where))
            if os.path.islink(folder):
                continue
            for name in _listing(folder):
                if pattern.fullmatch(name):
                    target = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        atomic_io.remove_entry(target)
                    removed.append(target)
        return removed

    def unsafe_entries(self) -> list[str]:
        """What in the folder's tree a run never makes (sorted, relative paths): a symbolic
        link anywhere, a FIFO, socket or device, a hard-linked file, a run folder
        (`RUN_FOLDERS`) that is not a folder or a run file that is one. Writing into such
        a tree could reach outside it; nothing in it is touched."""
        found = []
        for folder, names, files in os.walk(self.path):
            for name in [*names, *files]:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                relative = os.path.relpath(path, self.path)
                if stat.S_ISLNK(info.st_mode):
                    found.append(f"{relative} (a symbolic link)")
                elif not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                    found.append(f"{relative} (not a file or folder)")
                elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    found.append(f"{relative} (a hard link)")
        for name in RUN_FOLDERS:
            path = self.join(name)
            if os.path.lexists(path) and not os.path.isdir(path):
                found.append(f"{name} (not a folder)")
        for name in RUN_FILES - set(RUN_FOLDERS) - {"saved_model.tmp", "saved_model.old"}:
            if os.path.isdir(self.join(name)) and not os.path.islink(self.join(name)):
                found.append(f"{name} (a folder)")
        return sorted(set(found))

    def _refuse_unsafe(self, action: str) -> None:
        unsafe = self.unsafe_entries()
        if unsafe:
            raise FolderError(f"cannot {action} {self.path}: it holds what a run never makes "
                              f"({', '.join(unsafe[:3])}{', ...' if len(unsafe) > 3 else ''}); "
                              "nothing was changed")

    def foreign_entries(self) -> list[str]:
        """The entries of the folder that no run writes (sorted): a folder with any is not
        a run's, and nothing in it is touched."""
        return sorted(name for name in _listing(self.path)
                      if name not in RUN_FILES and not TEMPORARY["."].fullmatch(name))

    def check_is_run(self, action: str = "resume") -> None:
        """FolderError (one line) unless the folder holds a started run and nothing else:
        a regular flags.cfg and only the names a run writes. Reads, never writes: called
        before the lock file is made."""
        if not os.path.isdir(self.path) or os.path.islink(self.path):
            raise FolderError(f"cannot {action} {self.path}: it is not a folder")
        foreign = self.foreign_entries()
        if foreign:
            raise FolderError(f"cannot {action} {self.path}: it holds files that are not a "
                              f"training run's ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); nothing was changed")
        self._refuse_unsafe(action)

    def checkpoint_paths(self) -> list[str]:
        """The prefixes ('.../ckpt-E') of the intact epoch checkpoints (`read_state`: the
        state file, written last, reads, and the files its checksums name are regular files
        that match them), by epoch; FolderError if none."""
        names = _listing(self.checkpoints)
        epochs = sorted(checkpoint_epoch(name.rsplit(".", 1)[0]) for name in names
                        if re.fullmatch(r"ckpt-\d+\.index", name))
        found = [e for e in epochs if read_state(self.checkpoints, e)[1] is None]
        if not found:
            raise FolderError(f"no intact checkpoints in {self.checkpoints}")
        return [self.join("checkpoints", f"ckpt-{e}") for e in found]

    def is_complete(self) -> bool:
        return os.path.exists(self.results_path)

    def is_started(self) -> bool:
        """Whether a run was started here (its flags.cfg is written before anything else
        of the run's; whatever is at that name counts, and `check_is_run` checks it)."""
        return os.path.lexists(self.flags_path)

    def lock(self) -> None:
        """Takes the folder's writer lock (FolderError naming the holder when another
        process has it); the folder must exist."""
        if not os.path.isdir(self.path):
            raise FolderError(f"{self.path} is not a folder")
        try:
            self._lock.acquire()
        except run_lock.LockedError as error:
            raise FolderError(str(error)) from None
        except OSError as error:
            raise FolderError(f"workdir {self.path} cannot be written: "
                              f"{error.strerror}") from error
        # what this process did not write (a lock file it made is its own)
        self._before = set(os.listdir(self.path)) - (
            {run_lock.LOCK_NAME} if self._lock.created else set())

    def create(self, *, allow_partial: bool = False) -> None:
        """Makes and locks the folder for a new run; refuses one that holds files (an
        earlier run) unless `allow_partial` (--resume of a run that died before it wrote
        its flags). Proves it can be written."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise FolderError(f"workdir {self.path} exists and is not a folder")
        self._created = _outermost_missing(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise FolderError(f"workdir {self.path} cannot be written: "
                              f"{error.strerror}") from error
        foreign = self.foreign_entries()
        if foreign:  # not a run's folder: nothing in it is touched, no lock file made
            raise FolderError(f"workdir {self.path} holds files that are not a training "
                              f"run's ({', '.join(foreign[:3])}); choose a new --workdir")
        self._refuse_unsafe("use")
        self.lock()  # before anything is read or written: one writer at a time
        held = set(os.listdir(self.path)) - {run_lock.LOCK_NAME}
        if held and not allow_partial:
            self.release()
            raise FolderError(f"workdir {self.path} is not empty (it holds an earlier run); "
                              "choose a new --workdir, or pass --resume to continue it")
        if allow_partial:
            self.remove_temporary_files()  # what a kill mid-write left
        probe = self.join(WRITE_TEST)
        try:
            atomic_io.remove_entry(probe)  # a stale probe (or anything planted there)
            with atomic_io.create_new(probe, "w") as f:
                f.write("ok")
        except OSError as error:
            self.release()
            raise FolderError(f"workdir {self.path} cannot be written: "
                              f"{error.strerror}") from error
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)

    def release(self) -> None:
        """Releases the folder's lock; a lock file this process made in a folder that
        holds no run (a refused folder) is removed with it."""
        self._lock.release(remove=not self.is_started())

    @contextlib.contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """Deletes what this run wrote if it fails before its first checkpoint, so a
        refused or crashed start leaves no half run behind (the folder itself too, and the
        parents `create` made while they are empty). A run with a checkpoint is kept, to be
        resumed."""
        try:
            yield
        except BaseException:
            if not self.has_checkpoint() and os.path.isdir(self.path):
                self.cleared_unfinished = True
                if self._created:
                    shutil.rmtree(self.path, ignore_errors=True)
                    _remove_empty_parents(self.path, up_to=self._created)
                else:  # only what this start wrote: entries that were not there before
                    for name in set(os.listdir(self.path)) - self._before:
                        target = self.join(name)
                        if os.path.isdir(target):
                            shutil.rmtree(target, ignore_errors=True)
                        else:
                            os.remove(target)
            raise

    # ------------------------------------------------------------ flags
    def write_flags(self, text: str) -> None:
        atomic_io.write_text(self.flags_path, text)

    def read_flags(self) -> str:
        """flags.cfg's text; FolderError (one line) for one that is not a regular file,
        larger than MAX_FLAGS_BYTES, or not UTF-8 text."""
        try:
            with atomic_io.open_regular(self.flags_path, "rb") as f:
                if os.fstat(f.fileno()).st_size > MAX_FLAGS_BYTES:
                    raise FolderError(f"{self.flags_path} is larger than {MAX_FLAGS_BYTES} "
                                      f"bytes: {self.path} is not a training run's folder")
                return f.read().decode("utf-8")
        except OSError as error:
            raise FolderError(f"{self.flags_path} is unreadable ({error.strerror}): "
                              f"{self.path} is not a training run's folder") from error
        except UnicodeDecodeError as error:
            raise FolderError(f"{self.flags_path} is not UTF-8 text (byte {error.start}): "
                              f"{self.path} is not a training run's folder") from error

    def check_resumable(self, flags: dict[str, str], *, at_default: set[str]) -> None:
        """A run can resume when it is unfinished and was started with the same training
        flags.

        Args:
          flags: training flag name -> its line as flags.cfg holds it ('--lr=0.05',
            '--augment_flip' / '--noaugment_flip'); flags without a value are left out.
          at_default: the names whose value is their default: a flag the saved flags.cfg
            does not name (one added to clid-tf since) matches when it is at its default.
        """
        if self.is_complete():
            raise FolderError(f"the run in {self.path} is complete (results.json exists); "
                              "nothing to resume")
        saved = flag_lines(self.read_flags(), names=set(flags) | set(at_default))
        changed = sorted(
            name for name in set(flags) | set(saved) if name not in NOT_SIGNIFICANT
            and saved.get(name) != flags.get(name)
            and not (name not in saved and name in at_default))
        if changed:
            raise FolderError(f"cannot resume {self.path}: flags differ from the "
                              f"checkpointed run ({', '.join('--' + n for n in changed)})")

    # ------------------------------------------------------------ split
    def save_split(self, arrays: dict[str, np.ndarray]) -> None:
        with atomic_io.open_atomic(self.join("split.npz"), "wb") as f:
            np.savez(f, **arrays)

    def has_split(self) -> bool:
        return atomic_io.is_regular_file(self.join("split.npz"))

    def check_split(self, arrays: dict[str, np.ndarray], *,
                    action: str = "resume") -> list[str]:
        """The saved split equals `arrays`: the same inputs (their fingerprints), labels,
        noise and samples as the saved run; FolderError naming the first difference. A
        fingerprint the saved split lacks (a run from before fingerprints) is not
        compared. Image files whose size or time changed (a corrupt file replaced) do not
        stop the resume: the returned note lines name them."""
        if not self.has_split():
            raise FolderError(f"{self.path} has no split.npz: the run never started training")
        try:
            saved = atomic_io.read_npz(self.join("split.npz"))
        except (OSError, ValueError, EOFError, KeyError) as error:
            raise FolderError(f"cannot {action} {self.path}: its split.npz is unreadable "
                              f"({error}); start a new run") from error
        gone = [k for k in saved if k.startswith("fingerprint_") and k not in arrays]
        notes = []
        for key in [*arrays, *gone]:
            if key.startswith("filestats_"):
                split = key.split("_", 1)[1]
                notes += _changed_files(split, saved.get(key), arrays[key],
                                        arrays.get(f"filenames_{split}"))
                continue
            if key.startswith("filenames_"):  # names for the note; fingerprinted anyway
                continue
            if key not in saved and key.startswith("fingerprint_"):
                continue
            if key not in saved or key not in arrays or not np.array_equal(saved[key],
                                                                           arrays[key]):
                raise FolderError(f"cannot {action} {self.path}: {_CHANGED.get(key, key)} "
                                  "since the run started; start a new run (or restore "
                                  "the data)")
        return notes

    # ------------------------------------------------------------ results
    def write_audit(self, summary: dict) -> None:
        atomic_io.write_json(self.audit_json, summary)

    def write_results(self, results: dict) -> None:
        atomic_io.write_json(self.results_path, results)

    def read_results(self) -> dict:
        """results.json as a dict; FolderError (one line) when it is not a regular file of
        a JSON object."""
        try:
            with atomic_io.open_regular(self.results_path) as f:
                results = json.load(f)
        except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
            raise FolderError(f"{self.results_path} is unreadable ({error}); restore it or "
                              "start a new run") from None
        if not isinstance(results, dict):
            raise FolderError(f"{self.results_path} does not hold a results object; restore "
                              "it or start a new run")
        return results

    def merge_results(self, key: str, value) -> None:
        """results.json[key] = value of a finished run, keeping the rest (atomic; the
        caller holds the lock). FolderError for an unfinished run: its results.json is the
        training's to write."""
        if not self.is_complete():
            raise FolderError(f"the run in {self.path} has not finished: results.json is "
                              "written when it does")
        results = self.read_results()
        results[key] = value
        self.write_results(results)


def for_this_worker(path: str, tf_config: str | None) -> str:
    """The run folder this process writes in a multi-worker run configured by TF_CONFIG
    (its JSON text): the chief's is `path` (the task of type 'chief', or worker 0 when the
    cluster has no chief); every other worker writes its own copy beside it,
    `path.worker<i>`, never into the chief's folder. Every worker computes the same
    weights and checkpoints them (TensorFlow's collective saves need all of them), so each
    can resume from its own folder; the non-chief folders can be deleted after the run.
    FolderError (one line) for a TF_CONFIG that names no task of this process."""
    try:
        config = json.loads(tf_config or "")
        task = config["task"]
        kind, index = str(task["type"]), int(task["index"])
        has_chief = bool(config.get("cluster", {}).get("chief"))
    except (ValueError, KeyError, TypeError) as error:
        raise FolderError("--strategy=multi_worker reads TF_CONFIG, a JSON object with "
                          "'cluster' and 'task' {'type', 'index'}; it is missing or malformed "
                          f"({type(error).__name__})") from None
    if kind == "chief" or (kind == "worker" and index == 0 and not has_chief):
        return path
    if kind != "worker":
        raise FolderError(f"TF_CONFIG task type {kind!r}: a multi-worker run has workers and "
                          "an optional chief only")
    return f"{os.path.normpath(os.path.expanduser(path))}.worker{index}"


def _listing(folder: str) -> list[str]:
    return os.listdir(folder) if os.path.isdir(folder) else []


def _outermost_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None: `path` exists)."""
    missing = None
    while path and not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_empty_parents(path: str, *, up_to: str) -> None:
    """Removes the parents of `path` up to and including `up_to` while they are empty
    (another run may have started in one of them meanwhile: that one stays)."""
    while path != up_to:
        path = os.path.dirname(path)
        try:
            os.rmdir(path)
        except OSError:
            return


def flag_lines(text: str, *, names: set[str]) -> dict[str, str]:
    """name -> line of each flag in `names` that a flags.cfg text sets ('--name=value',
    '--name', '--noname' for a boolean); absl's own flags and unknown lines are left out."""
    found = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        name = line[2:].split("=", 1)[0]
        if name not in names and name.startswith("no") and name[2:] in names:
            name = name[2:]
        if name in names:
            found[name] = line
    return found


# What differs when a split.npz entry does (resume's refusal says it).
_CHANGED = {
    "noisy_labels": "the noisy training labels differ (the labels, --noise or --seed changed)",
    "train_indices": "the training samples differ (another split or --val_split)",
    "meta_indices": "the meta set differs",
    "meta_indices_net2": "the second network's meta set differs",
    "val_indices": "the held-out samples differ",
    **{f"fingerprint_{split}_{part}": f"the {name} {what} changed"
       for split, name in (("train", "training"), ("val", "validation"), ("test", "test"))
       for part, what in (("inputs", "inputs"), ("labels", "labels"))},
}


def input_fingerprints(dataset) -> dict[str, np.ndarray]:
    """What split.npz keeps of each split of a `datasets.Dataset` so that a resume on
    changed data is refused by name: fingerprint_<split>_inputs (array contents; file
    names and decoding) and fingerprint_<split>_labels, and for image files
    filestats_<split> (each file's size and time, int64 [N, 2])."""
    found = {}
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if split is None:
            continue
        found[f"fingerprint_{name}_inputs"] = np.array(split.inputs.fingerprint())
        found[f"fingerprint_{name}_labels"] = np.array(
            inputs_lib.array_fingerprint(np.asarray(split.labels)))
        if hasattr(split.inputs, "file_stats"):
            found[f"filestats_{name}"] = split.inputs.file_stats()
            found[f"filenames_{name}"] = split.inputs.names()
    return found


def _changed_files(split: str, saved, now: np.ndarray, names) -> list[str]:
    """The note naming the image files of one split whose size or time changed."""
    if saved is None or saved.shape != now.shape:
        return []
    changed = np.flatnonzero(np.any(saved != now, axis=1))
    if not changed.size:
        return []
    shown = [str(names[i]) if names is not None else f"#{i}" for i in changed[:3]]
    more = ", ..." if changed.size > 3 else ""
    return [f"note: {changed.size} {split} image file(s) changed since the run started "
            f"({', '.join(shown)}{more}): resuming with the files as they are now"]


def split_arrays(noisy_labels: np.ndarray, train_indices: np.ndarray,
                 meta_indices: np.ndarray | None,
                 val_indices: np.ndarray | None) -> dict[str, np.ndarray]:
    """What split.npz holds."""
    none = np.zeros([0], np.int64)
    return {"noisy_labels": noisy_labels, "train_indices": train_indices,
            "meta_indices": none if meta_indices is None else meta_indices,
            "val_indices": none if val_indices is None else val_indices}


def read_state(directory: str, epoch: int) -> tuple[dict | None, str | None]:
    """(the arrays of epoch `epoch`'s state file, None) when it reads and every checkpoint
    file its checksums name is a regular file of this folder matching them; else (None,
    why). TensorFlow's own restore comes after (`runs.callbacks.RunState`)."""
    try:
        state = atomic_io.read_npz(os.path.join(directory, f"state-{epoch}.npz"))
    except FileNotFoundError:
        return None, "its state file is missing"
    except Exception as error:  # pylint: disable=broad-except  # zip/npy/header errors
        return None, f"its state file is unreadable: {type(error).__name__}"
    try:
        checksums = json.loads(str(state.get("checksums", "{}")))
    except ValueError:
        return None, "its state file's checksums are unreadable"
    if not isinstance(checksums, dict):
        return None, "its state file's checksums are unreadable"
    for name, digest in checksums.items():
        if not re.fullmatch(rf"ckpt-{epoch}\.[\w-]+", str(name)):
            return None, f"its state file names {name!r}, not one of its checkpoint files"
        path = os.path.join(directory, name)
        if not atomic_io.is_regular_file(path):
            return None, f"{name} is missing (or not a regular file)"
        if atomic_io.file_sha256(path) != digest:
            return None, f"{name} does not match its checksum"
    return state, None


def checkpoint_epoch(path: str) -> int:
    """Epoch of a RunState checkpoint: '.../ckpt-12' -> 12."""
    return int(path.rsplit("-", 1)[-1])
