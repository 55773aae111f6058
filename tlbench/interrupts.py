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


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block is done (closing a run: a second Ctrl-C there left it
    RUNNING), then act as usual. Only in the main thread; elsewhere signals cannot arrive anyway."""
    pending: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if pending:
            raise KeyboardInterrupt(f"signal {pending[0]}")
