"""A run's folder: the one module that knows its layout (no TensorFlow import here).

  RUN/flags.cfg          every flag of the run, reusable with --flagfile
  RUN/split.npz          noisy labels and sample indices, checked again on resume
  RUN/results.json       accuracies, selection, noise report, history, flags
  RUN/checkpoints/       per-epoch checkpoints for resuming (clid_tf.runs.callbacks.RunState)
  RUN/checkpoints/selected/  weights of the lowest-CLID epochs (clid_tf.evaluation.selection)
  RUN/tensorboard/       event files
  RUN/saved_model/       the exported SavedModel
  RUN/audit.csv          the label audit

The training CLI, resume and the audit read and write runs only through `RunFolder`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Iterable, Iterator

import numpy as np

from clid_tf import atomic_io

# What a run writes into its folder (a --resume start may find these, and only these).
RUN_FILES = {"flags.cfg", "split.npz", "results.json", "checkpoints", "tensorboard",
             "saved_model", "saved_model.tmp", "saved_model.old", "audit.csv"}
# Flags whose change does not stop a run from resuming.
NOT_SIGNIFICANT = ("resume", "verbose", "verbosity", "workdir", "export", "audit",
                   "audit_folds")


class FolderError(Exception):
    """A folder that cannot hold, resume or be read as a run: one line for the user."""


class RunFolder:
    """Paths and files of one run in `path`."""

    def __init__(self, path: str):
        self.path = os.path.normpath(os.path.expanduser(path))  # no shell expands '--workdir=~/x'
        self._created = None  # the outermost folder `create` made, removed on a failed start

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

    # ------------------------------------------------------------ state of the folder
    def has_checkpoint(self) -> bool:
        return os.path.exists(self.join("checkpoints", "checkpoint"))

    def checkpoint_paths(self) -> list[str]:
        """The epoch checkpoints' prefixes ('.../ckpt-E'), by epoch; FolderError if none."""
        found = sorted({name.rsplit(".", 1)[0] for name in _listing(self.checkpoints)
                        if re.fullmatch(r"ckpt-\d+\.index", name)}, key=checkpoint_epoch)
        if not found:
            raise FolderError(f"no checkpoints in {self.checkpoints}")
        return [self.join("checkpoints", name) for name in found]

    def is_complete(self) -> bool:
        return os.path.exists(self.results_path)

    def create(self, *, allow_partial: bool = False) -> None:
        """Makes the folder for a new run; refuses one that holds files (an earlier run)
        unless `allow_partial` (--resume of a run that died before its first checkpoint).
        Proves it can be written."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise FolderError(f"workdir {self.path} exists and is not a folder")
        held = os.listdir(self.path) if os.path.isdir(self.path) else []
        if held and not allow_partial:
            raise FolderError(f"workdir {self.path} is not empty (it holds an earlier run); "
                              "choose a new --workdir, or pass --resume to continue it")
        if held and not set(held) <= RUN_FILES:
            # --resume continues a run that died before its first checkpoint; a folder
            # with anything else in it is not such a run and is left alone.
            raise FolderError(f"workdir {self.path} holds files that are not a training "
                              f"run's ({', '.join(sorted(set(held) - RUN_FILES)[:3])}); "
                              "choose a new --workdir")
        self._before = set(held)
        self._created = _outermost_missing(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = self.join(".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as error:
            raise FolderError(f"workdir {self.path} cannot be written: "
                              f"{error.strerror}") from error

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
        try:
            with open(self.flags_path) as f:
                return f.read()
        except OSError as error:
            raise FolderError(f"{self.flags_path} is unreadable ({error.strerror}): "
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

    def check_split(self, arrays: dict[str, np.ndarray]) -> None:
        """The saved split equals `arrays` (same data, noise and seed as the saved run)."""
        if not os.path.isfile(self.join("split.npz")):
            raise FolderError(f"{self.path} has no split.npz: the run never started training")
        with np.load(self.join("split.npz")) as saved:
            for key, value in arrays.items():
                if key not in saved or not np.array_equal(saved[key], value):
                    raise FolderError(f"cannot resume: the {key.replace('_', ' ')} differ "
                                      "from the checkpointed run (data or code changed)")

    # ------------------------------------------------------------ results
    def write_results(self, results: dict) -> None:
        atomic_io.write_json(self.results_path, results)

    def read_results(self) -> dict:
        with open(self.results_path) as f:
            return json.load(f)

    def merge_results(self, key: str, value) -> None:
        """results.json[key] = value, keeping the rest (a missing file starts empty)."""
        results = self.read_results() if self.is_complete() else {}
        results[key] = value
        self.write_results(results)


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


def split_arrays(noisy_labels: np.ndarray, train_indices: np.ndarray,
                 meta_indices: np.ndarray | None,
                 val_indices: np.ndarray | None) -> dict[str, np.ndarray]:
    """What split.npz holds."""
    none = np.zeros([0], np.int64)
    return {"noisy_labels": noisy_labels, "train_indices": train_indices,
            "meta_indices": none if meta_indices is None else meta_indices,
            "val_indices": none if val_indices is None else val_indices}


def ranked_paths(paths: Iterable[str]) -> list[str]:
    """Checkpoint prefixes '.../ckpt-E' sorted by epoch E."""
    return sorted(paths, key=checkpoint_epoch)


def checkpoint_epoch(path: str) -> int:
    """Epoch of a RunState checkpoint: '.../ckpt-12' -> 12."""
    return int(path.rsplit("-", 1)[-1])
