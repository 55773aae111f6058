"""Which process owns a run, and is it still alive? A run is tagged with its process (host, pid, start
time); a later run of the same config that finds it RUNNING while that process is gone (kill -9, power
loss, a second Ctrl-C during cleanup) can close it instead of leaving it RUNNING forever."""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: MLflow tag holding `host:pid:start` of the process that owns a RUNNING run.
PROCESS_TAG = "tlbench.process"


def _stat(pid: int) -> tuple[str, str]:
    """(state, start time in clock ticks since boot) from /proc (Linux); ("", "") where unavailable.
    The start time tells the process apart from a later one that was given the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_stat(os.getpid())[1]}"


def process_state(token: str) -> str:
    """ "alive", "gone", or "unknown" (another host, or a token this version did not write)."""
    parts = token.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return "unknown"
    pid, start = int(parts[1]), parts[2]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # exists, owned by another user
        pass
    state, now_start = _stat(pid)
    if state == "Z" or (start and now_start and now_start != start):  # a zombie, or the pid was reused
        return "gone"
    return "alive"
