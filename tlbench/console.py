"""What the console shows: tlbench's own progress lines, not the libraries' INFO chatter."""

from __future__ import annotations

import logging
import os


def quiet_libraries(import_libraries: bool = True) -> None:
    """Keep the console to tlbench's own progress: library chatter goes to WARNING.

    Importing Lightning or MLflow resets their loggers to INFO, so a run imports them first; `main()`
    passes import_libraries=False because those imports take seconds, which `--help` must not pay."""
    import warnings

    if import_libraries:
        import mlflow  # noqa: F401
        import pytorch_lightning  # noqa: F401

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact copy otherwise
    # against a server MLflow prints two emoji links per closed run; tlbench prints its own summary and UI hint
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("pytorch_lightning", "lightning_fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    # a diverged run's NaN predictions: the run fails with its own line (module: non-finite predictions)
    warnings.filterwarnings("ignore", message=".*Encountered `nan` values in tensor.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # checkpoints live in <checkpoint_dir>/<config hash>/: a rerun or resume=true finds them there on purpose
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
