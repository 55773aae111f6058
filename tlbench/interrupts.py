"""Signals that end a run: SIGTERM (a scheduler, `kill`, a stopped worker) is treated like Ctrl-C, so the
run is closed as KILLED with its checkpoints kept, and a search trial is queued again."""

from __future__ import annotations

import signal
from contextlib import contextmanager

#: The signal that asked this process to stop, until the run it stopped is closed. A KeyboardInterrupt
#: raised by a handler while Python runs a garbage-collector callback or a __del__ is printed and dropped
#: ("Exception ignored in ..."), and training would go on as if nothing happened: the trainer therefore
#: checks this at every batch (trainer_factory.StopWhenAsked) and raises it again at a point where it propagates.
_requested: list[int] = []


def request_stop(signum: int):
    """Note the request, then interrupt as Python does (KeyboardInterrupt from wherever the code is)."""
    _requested[:] = [signum]
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_dropped_interrupts() -> None:
    """Python prints a KeyboardInterrupt it had to drop (raised in a garbage-collector callback) as a
    nine-line "Exception ignored" traceback; the stop it carried is raised again at the next batch
    (raise_if_stop_requested), so that one is left unprinted. Anything else prints as before."""
    import sys

    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested):
            default(unraisable)

    sys.unraisablehook = hook


def raise_if_stop_requested() -> None:
    if _requested:
        raise KeyboardInterrupt(f"signal {_requested[0]}")


def clear_stop_request() -> None:
    """The run the request stopped is closed: nothing more to raise."""
    _requested.clear()


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler or `kill`) behaves like Ctrl-C: the run is closed as KILLED, checkpoints kept."""

    def handler(signum, frame):
        request_stop(signum)

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
            request_stop(pending[0])
