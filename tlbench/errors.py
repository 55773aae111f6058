"""Errors a user can cause. Each carries one line that says what was wrong and what is allowed;
the CLI prints that line and exits non-zero instead of showing a traceback."""


class TlbenchError(Exception):
    """Base class: the message is the whole user-facing explanation."""

    exit_code = 2


class ConfigError(TlbenchError):
    """A config key, type or choice that is not allowed."""


class DataError(TlbenchError):
    """A dataset that is missing, corrupt or inconsistent."""


class WeightsError(TlbenchError):
    """Pretrained weights or a checkpoint that cannot be resolved or loaded."""


class TrainingError(TlbenchError):
    """A run that cannot continue, e.g. a non-finite loss."""

    exit_code = 1


def one_line(exc: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """An exception as one short line for a one-line error: its first non-empty line (the type's name
    when it has no message), optionally prefixed by the type's name."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return (line or type(exc).__name__)[:limit]
