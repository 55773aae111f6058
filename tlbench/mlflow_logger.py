"""Lightning logger writing into a run that tlbench opened (kept apart from tracking.py so that reading
runs, e.g. for reports, does not import Lightning)."""

from __future__ import annotations

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from .tracking import RunRecorder


class MlflowMetricLogger(Logger):
    """Lightning logger that writes metrics into an already-open RunRecorder (we own the run's lifecycle,
    so Lightning's own MLFlowLogger, which ends runs itself, is not used)."""

    def __init__(self, recorder: RunRecorder):
        super().__init__()
        self.recorder = recorder

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
        self.recorder.log_metrics({k: v for k, v in metrics.items()}, step or 0)
