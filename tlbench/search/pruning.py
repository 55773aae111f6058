"""Optuna pruning for a `pytorch_lightning` Trainer.

optuna-integration's callback imports the `lightning.pytorch` namespace and cannot attach to a
`pytorch_lightning` Trainer, so tlbench has its own: after each validation epoch it reports the
selection metric to the trial and stops the run when the pruner says so.

A pruned trial's MLflow run ends KILLED with the tag `pruned=true`: KILLED, not FINISHED, because the run
stopped before its configured epochs (so `tracking.skip_done` never treats the config as done), and
not FAILED, because nothing went wrong.
"""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl


class PrunedTrial(optuna.TrialPruned):
    """optuna.TrialPruned (so Optuna records PRUNED) that tells `recorded_run` how to close the MLflow run."""

    run_status = "KILLED"
    run_tags = {"pruned": "true"}

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


class OptunaPruning(pl.Callback):
    """Report `monitor` to `trial` after every validation epoch (step = epoch); raise PrunedTrial when
    the pruner says so. Also keeps the best value seen: the objective at the selected checkpoint."""

    def __init__(self, trial: optuna.Trial, monitor: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.epochs = 0
        self.run_id: str | None = None
        self.pruned_epoch: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # tlbench's MLflow logger's version is the run id: lets the study link trial ↔ run even if it dies.
        version = getattr(trainer.logger, "version", None)
        if isinstance(version, str) and version:
            self.run_id = version
            self.trial.set_user_attr("mlflow_run_id", version)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"pruning: metric '{self.monitor}' was not logged; logged: {', '.join(sorted(trainer.callback_metrics))}")
        value = float(value)
        # Optuna's step is Lightning's 0-based index (what the committed studies' `n_warmup_steps` count);
        # what people and MLflow read is the epoch's number
        index = trainer.current_epoch
        epoch = self.epochs = index + 1
        if math.isfinite(value) and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best, self.best_epoch = value, epoch
        self.trial.report(value, step=index)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            raise PrunedTrial(f"trial {self.trial.number} pruned after epoch {epoch} ({self.monitor}={value:.4f})", epoch)


def close_pruned_run(client, run_id: str, epoch: int | None) -> None:
    """Make a pruned trial's MLflow run read KILLED + `pruned=true` (whether or not `recorded_run`
    already knows PrunedTrial; without that it has closed the run FAILED with a failure_reason)."""
    client.set_tag(run_id, "pruned", "true")
    if epoch is not None:
        client.set_tag(run_id, "pruned_epoch", str(epoch))
    run = client.get_run(run_id)
    if "failure_reason" in run.data.tags:
        client.delete_tag(run_id, "failure_reason")
    if run.info.status != "KILLED":
        client.set_terminated(run_id, "KILLED")
