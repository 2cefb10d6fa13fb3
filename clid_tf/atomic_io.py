"""Safe file writes and reads inside a run folder.

Writes are atomic: a temporary name is written, then renamed, so readers and crashes never
see a half-written file, and a failed write (a full disk) leaves no temporary file. The
temporary file is always a new regular file: a symbolic link, FIFO or device found at its
name is removed (the link, never what it points to), and the file is created exclusively
without following links, so nothing outside the folder is ever written through a name
inside it. Reads of a run's own files (`open_regular`) open regular files only, never
through a symbolic link and never blocking on a FIFO.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat

import numpy as np

# Opening for writing: create, never an existing entry, never through a link.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# Opening for reading: never through a link, never wait for a FIFO's writer.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotRegularFileError(OSError):
    """A path that should hold a regular file holds a link, a folder, a FIFO or a device."""


def create_new(path: str, mode: str = "w", **kwargs):
    """open(path, mode) for a file that does not exist yet: created exclusively, never
    through a symbolic link (FileExistsError when anything is at `path`)."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"create_new writes: mode must be 'w' or 'wb', got {mode!r}")
    fd = os.open(path, _CREATE, 0o644)
    try:
        return os.fdopen(fd, mode.replace("x", "w"), **kwargs)
    except BaseException:
        os.close(fd)
        raise


def remove_entry(path: str) -> None:
    """Removes what is at `path` without following it: a symbolic link is unlinked (its
    target stays), a file unlinked, a folder removed with its contents; nothing there is
    fine."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)  # refuses symbolic links inside as roots; never follows them
    else:
        os.unlink(path)


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs):
    """open(path + '.tmp', mode) that replaces `path` when the block ends without error;
    on an error the temporary file is removed and `path` is left as it was. Whatever was at
    the temporary name (a stale file, a planted link) is removed first, not written
    through; `path` itself is replaced, never followed (rename does not follow links)."""
    tmp = f"{path}.tmp"
    try:
        remove_entry(tmp)
        with create_new(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_regular(path: str, mode: str = "r", **kwargs):
    """open(path, mode) for reading a regular file; NotRegularFileError (an OSError) when
    `path` is a symbolic link, a folder, a FIFO or a device (no read blocks on a FIFO)."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_regular reads: mode must be 'r' or 'rb', got {mode!r}")
    try:
        fd = os.open(path, _READ)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotRegularFileError(errno.ELOOP, "is a symbolic link", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(errno.EINVAL, "is not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def read_npz(path: str, keys=None) -> dict:
    """The arrays of an npz file (all, or `keys`) as {name: ndarray}, read as data: a
    regular file only (`open_regular`), no pickles, and every array's header checked
    against the bytes its archive member holds before numpy allocates anything (a 1 KB
    file can declare terabytes). ValueError naming the array for a declared size the
    member does not hold; numpy's and zipfile's own errors otherwise."""
    with open_regular(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
        names = list(npz.files) if keys is None else [k for k in keys if k in npz.files]
        for name in names:
            member = npz.zip.getinfo(f"{name}.npy")
            with npz.zip.open(member) as data:
                version = np.lib.format.read_magic(data)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(data)
            declared = int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 1)
            if declared > member.file_size:
                raise ValueError(f"{name} declares shape {shape} ({declared} bytes) but "
                                 f"holds only {member.file_size} bytes: the file is damaged")
        arrays = {}
        for name in names:
            try:
                arrays[name] = np.asarray(npz[name])
            except ValueError as error:  # an object array needs pickle, which is refused
                if "allow_pickle" not in str(error):
                    raise
                raise ValueError(f"{name} is a pickled object array; save plain numeric "
                                 "arrays instead") from None
        return arrays


def is_regular_file(path: str) -> bool:
    """Whether `path` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def write_text(path: str, text: str) -> None:
    with open_atomic(path) as f:
        f.write(text)


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a regular file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open_regular(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
