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
