"""Signals that end a run: SIGTERM (a scheduler, `kill`, a stopped worker) is treated like Ctrl-C, so the
run is closed as KILLED with its checkpoints kept, and a search trial is queued again."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler or `kill`) behaves like Ctrl-C: the run is closed as KILLED, checkpoints kept."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
