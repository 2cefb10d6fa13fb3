"""Atomic file writes: write to a temporary name, then rename, so readers and crashes never
see a half-written file."""

from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))
