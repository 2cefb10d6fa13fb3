"""One writer per run folder: an exclusive OS lock on RUN/.lock (no TensorFlow import).

`flock` locks belong to the open file, so the operating system releases them when the
process ends in any way (kill -9 included): a dead run leaves no stale lock. The lock file
holds the holder's pid, command and start time, so a refused second writer can say who
holds the folder. Readers (TensorBoard, a look at results.json) take no lock. The lock file
is opened without following a symbolic link and must be a regular file, so a `.lock`
planted as a link (or a FIFO) is refused before anything is written through it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import stat
import sys

LOCK_NAME = ".lock"


class LockedError(Exception):
    """Another process holds the folder's lock: one line naming it."""


class RunLock:
    """The exclusive lock of one run folder, held until `release` or the process ends."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self._file = None
        self.created = False  # whether `acquire` made the lock file

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Takes the lock without waiting; LockedError when another process has it or the
        lock file is not a regular file of its own (a link, a FIFO, a folder)."""
        if self.held:
            return
        existed = os.path.lexists(self.path)
        handle = os.fdopen(self._open(), "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockedError(f"{os.path.dirname(self.path)} is in use by {holder}: one "
                              "process writes a run folder at a time; wait for it to end, "
                              "or use another --workdir") from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} ({_command()}, since {started})\n")
        handle.flush()
        self._file = handle
        self.created = not existed

    def _open(self) -> int:
        """A file descriptor of the lock file, opened read-write (created if missing)
        without following a link; LockedError unless it is a regular file."""
        flags = (os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | getattr(os, "O_CLOEXEC", 0))
        refused = (f"{self.path} is not a regular file of its own (a symbolic or hard link, "
                   "a folder or a FIFO): a run folder's lock is its own file; remove it and "
                   "retry")
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise LockedError(refused) from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # written in place below
            os.close(fd)
            raise LockedError(refused)
        os.set_blocking(fd, True)
        return fd

    def release(self, *, remove: bool = False) -> None:
        """Releases the lock; `remove` also deletes the lock file if `acquire` made it (a
        refused folder is left as it was found)."""
        if self._file is not None:
            if remove and self.created:
                os.remove(self.path)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _command() -> str:
    """This process's command line as its user typed it ('python -m clid_tf.train ...')."""
    if not sys.argv:
        return "python"
    first = sys.argv[0]
    name = os.path.basename(first)
    if name in ("train.py", "audit.py") and os.path.basename(os.path.dirname(first)) == "clid_tf":
        name = f"python -m clid_tf.{name[:-3]}"
    return " ".join([name, *sys.argv[1:]])
