"""What went wrong during a run, as one line for the user: write failures (a full disk,
lost permissions, a run folder removed under the run), image files found corrupt or
missing mid-training. Each line says what was kept of the run and how to continue.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from clid_tf.data import image_files
from clid_tf.runs import folder as run_folder

# errno of writes that fail for a reason outside the program.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENOENT, errno.EIO}
# The same reasons as TensorFlow's I/O errors word them.
WRITE_TEXTS = ("No space left on device", "Disk quota exceeded", "Permission denied",
               "Read-only file system", "Input/output error")


def one_line(error: BaseException, folder: run_folder.RunFolder | None,
             setup=None, *, auditing: bool = False) -> str | None:
    """The one line for `error`, or None when it is not a failure this module knows (then
    it is a bug, and its traceback is what a report needs). `auditing`: the error came
    from `python -m clid_tf.audit`, which is what to rerun."""
    if folder is None:
        return None
    text = " ".join(str(error).split())
    if _is_decode_error(error, text):
        return _corrupt_file(text, folder, setup)
    missing = _missing_path(error, text)
    if missing is not None and not _inside(missing, folder.path):
        return (f"the file {missing} was not found; {_kept(folder)}: put it back and "
                f"{_rerun(folder, auditing)}")
    reason = _write_reason(error, text, folder)
    if reason is None:
        return None
    folder.remove_temporary_files()
    return (f"could not write to {folder.path} ({reason}); {_kept(folder)}: fix that, then "
            f"{_rerun(folder, auditing)}")


def _rerun(folder: run_folder.RunFolder, auditing: bool) -> str:
    """How to continue: resume the training, or (the run finished, its audit failed)
    audit again."""
    if auditing or folder.is_complete():
        return f"run python -m clid_tf.audit --workdir={folder.path} again"
    return "rerun the same command with --resume"


def _kept(folder: run_folder.RunFolder) -> str:
    """What of the run is on disk now (a run that fails before its first epoch is saved
    removes what it wrote, `RunFolder.removed_on_failure`)."""
    if folder.cleared_unfinished:
        return "no epoch had finished, so nothing of the run was kept"
    if not os.path.isdir(folder.path):
        return "the run folder is gone, so nothing of the run is left"
    if folder.is_complete():
        return "the run finished and its results are kept"
    epoch = folder.last_epoch()
    if epoch is None:
        return "no epoch had finished, so nothing of the run was kept"
    return f"the checkpoint of epoch {epoch} is kept"


def _is_decode_error(error: BaseException, text: str) -> bool:
    """A TensorFlow image decode error (never one raised before TensorFlow started: it is
    not imported for this test)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.InvalidArgumentError) and (
        "decode" in text.lower() or "invalid png" in text.lower()
        or "invalid jpeg" in text.lower())


def _corrupt_file(text: str, folder: run_folder.RunFolder, setup) -> str:
    """The corrupt file named by its path under the data root, found by decoding the run's
    image files (tf.data's error names none)."""
    found = None
    for split in _splits(setup):
        files = getattr(split.inputs, "files", None)
        paths = getattr(files, "paths", None)
        if paths is None:
            continue
        hit = image_files.first_undecodable(paths)
        if hit is not None:
            found = (files.names()[hit[0]], files.root, hit[1])
            break
    what = ("an image file" if found is None
            else f"the image file {found[0]} (under {found[1]})")
    reason = text[:200] if found is None else found[2]
    kept = _kept(folder)
    if folder.last_epoch() is None:
        return (f"{what} cannot be decoded ({reason}); {kept}: replace it with a good copy "
                "and rerun the same command (or remove it from the data and rerun)")
    return (f"{what} cannot be decoded ({reason}); {kept}: replace it with a good copy and "
            "rerun the same command with --resume (removing it changes the data, so then "
            "start a new run in another --workdir)")


def _splits(setup):
    dataset = getattr(setup, "dataset", None)
    if dataset is None:
        return []
    return [s for s in (dataset.train, dataset.val, dataset.test) if s is not None]


def _missing_path(error: BaseException, text: str) -> str | None:
    """The path of a file that was not found, from an OSError or TensorFlow's message."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if isinstance(error, FileNotFoundError) and error.filename:
        return str(error.filename)
    if isinstance(error, tf.errors.NotFoundError):
        match = re.search(r"(/[^;:\s]+)[;:]? No such file or directory", text)
        if match:
            return match.group(1)
    return None


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _write_reason(error: BaseException, text: str,
                  folder: run_folder.RunFolder) -> str | None:
    """Why a write into the run folder failed ('No space left on device', ...), or None
    for another error (an unreadable input, a GPU out of memory: their tracebacks show)."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        if error.filename and not _inside(str(error.filename), folder.path):
            return None  # a file outside the run folder: not a write of the run's
        if error.errno == errno.ENOENT:
            return "its folder was removed while the run wrote to it"
        return error.strerror or str(error)
    if isinstance(error, tf.errors.OpError):
        for reason in WRITE_TEXTS:
            if reason.lower() in text.lower() and (
                    reason == "No space left on device" or folder.path in text):
                return reason
        if isinstance(error, tf.errors.NotFoundError) and folder.path in text:
            return "a file or folder of the run could not be written"
    return None
