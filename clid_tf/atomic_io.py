"""Atomic file writes: write to a temporary name, then rename, so readers and crashes never
see a half-written file."""

from __future__ import annotations

import contextlib
import json
import os


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs):
    """open(path + '.tmp', mode) that replaces `path` when the block ends without error."""
    tmp = f"{path}.tmp"
    with open(tmp, mode, **kwargs) as f:
        yield f
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    with open_atomic(path) as f:
        f.write(text)


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))
