"""Lightning logger writing into a run that tlbench opened (kept apart from tracking.py so that reading
runs, e.g. for reports, does not import Lightning)."""

from __future__ import annotations

import time

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from .tracking import RunRecorder


def numbered_epochs(metrics: dict[str, float]) -> dict[str, float]:
    """Lightning's metrics with its 0-based `epoch` index turned into the epoch's number (1 = the first
    pass over the data): the one convention of every recorded and printed epoch (progress lines, MLflow
    charts, `selected_epoch`, exports, checkpoint files). The test pass runs after the fit, when
    Lightning's counter already counts the completed epochs: its points keep it."""
    if "epoch" not in metrics or any(key.startswith("test/") for key in metrics):
        return dict(metrics)
    return {**metrics, "epoch": metrics["epoch"] + 1}


class MlflowMetricLogger(Logger):
    """Lightning logger that writes metrics into an already-open RunRecorder (we own the run's lifecycle,
    so Lightning's own MLFlowLogger, which ends runs itself, is not used).

    Metrics are written once per epoch, in one batch, rather than every `log_every_n_steps`: each write
    is a store transaction (a SQLite commit or an HTTP request). Lightning calls `finalize` after fit and
    test and on any exception or Ctrl-C, so at most the current epoch's points are lost to a SIGKILL."""

    def __init__(self, recorder: RunRecorder, max_buffered: int = 5000):
        super().__init__()
        self.recorder = recorder
        self.max_buffered = max_buffered
        self._buffer: list[tuple[dict[str, float], int, int]] = []
        self._epoch: float | None = None
        #: Set for the test pass: its metrics are also the selected model's (RunRecorder.start_selected_model).
        self.model_id: str | None = None

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.recorder.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> RunRecorder:
        return self.recorder

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Params are recorded from the validated config before training starts."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        if self._buffer and (epoch != self._epoch or sum(len(m) for m, _, _ in self._buffer) >= self.max_buffered):
            self.flush()
        self._epoch = epoch
        self._buffer.append((numbered_epochs(metrics), step or 0, int(time.time() * 1000)))  # the time it was measured

    @rank_zero_only
    def flush(self) -> None:
        """Write every buffered point in one batch (the recorder splits it into store-sized requests)."""
        buffered, self._buffer = self._buffer, []
        if buffered:
            self.recorder.log_metric_points(buffered, model_id=self.model_id)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()
