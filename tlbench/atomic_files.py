"""Whole-file writes that readers and concurrent writers can rely on: a reader sees the old file or the
new one, never half of one, and two processes building the same cache entry at once (two sweep workers)
never share a temp file."""

from __future__ import annotations

import glob
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

#: A temp file this old belongs to a writer that died (kill -9, power loss): removed by the next writer
#: of the same entry. A live writer's temp file is younger (the largest cache entries take minutes).
STALE_AFTER_S = 3600.0


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file unique to this call, fsync it and rename it over `path`; the
    temp file goes on any failure. (uuid4 reads os.urandom: no library's random state is touched.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
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


def _remove_stale_temps(path: Path) -> None:
    now = time.time()
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - temp.stat().st_mtime > STALE_AFTER_S:
                temp.unlink()
        except FileNotFoundError:  # another writer removed or renamed it meanwhile
            pass


def _array_digest(array) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def save_array_with_digest(path: Path, array) -> None:
    """np.save `array` atomically, with the SHA-256 of its content in `<path>.sha256` (written after it:
    an entry without its digest is never trusted)."""
    import numpy as np

    atomic_write(path, lambda handle: np.save(handle, array))
    atomic_write(Path(f"{path}.sha256"), lambda handle: handle.write(_array_digest(array).encode()))


def load_array_verified(path: Path):
    """The array at `path` if it is readable and matches its recorded digest; else None and the reason,
    so the caller rebuilds it (flipped bytes, a truncated file, another entry copied over it)."""
    import numpy as np

    digest_file = Path(f"{path}.sha256")
    try:
        array = np.load(path)
        recorded = digest_file.read_text().strip()
    except (OSError, ValueError, EOFError) as exc:
        return None, f"unreadable or without its digest ({type(exc).__name__})"
    if _array_digest(array) != recorded:
        return None, "its content does not match its digest"
    return array, None
