"""Atomic file writes: write to a temporary name, then rename, so readers and crashes never
see a half-written file, and a failed write (a full disk) leaves no temporary file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs):
    """open(path + '.tmp', mode) that replaces `path` when the block ends without error;
    on an error the temporary file is removed and `path` is left as it was."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    with open_atomic(path) as f:
        f.write(text)


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
