"""Whole-file writes that readers and concurrent writers can rely on: a reader sees the old file or the
new one, never half of one, and two processes building the same cache entry at once (two sweep workers)
never share a temp file."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file unique to this call, fsync it and rename it over `path`; the
    temp file goes on any failure. (uuid4 reads os.urandom: no library's random state is touched.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
