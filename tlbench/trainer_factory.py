"""The Lightning Trainer of a run plan: tlbench's callbacks (one line per epoch, stopping when asked),
atomic checkpoints, and one line instead of Lightning's traceback when the plan asks for hardware this
machine lacks. Used by a plain run (train.py) and by a fused group of heads (fused_heads.py)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from .checkpoint_io import AtomicCheckpointIO
from .config import RunConfig
from .errors import ConfigError
from .interrupts import raise_if_stop_requested
from .plan import RunPlan
from .progress import EpochSummary


def build_trainer(plan: RunPlan, logger, checkpoint: ModelCheckpoint | None, callbacks: list | None = None) -> pl.Trainer:
    """The Lightning Trainer of a plan; an accelerator or device count this machine lacks (trainer=gpu on a
    CPU-only machine) is one ConfigError line, not Lightning's traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    arguments = plan.trainer_arguments
    try:
        return _trainer(plan.run, arguments, logger, checkpoint, callbacks)
    except (MisconfigurationException, RuntimeError) as exc:
        if not isinstance(exc, MisconfigurationException) and "device" not in str(exc).lower():
            raise
        raise ConfigError(
            f"trainer.accelerator={arguments.get('accelerator')} trainer.devices={arguments.get('devices')}: "
            f"{str(exc).splitlines()[0]} on this machine; use trainer=default (CPU) or check the drivers"
        ) from None


class StopWhenAsked(pl.Callback):
    """Raises, at the next batch, a Ctrl-C or SIGTERM whose KeyboardInterrupt Python dropped because it
    landed in a garbage-collector callback (interrupts.request_stop): the run then stops KILLED as it should."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise_if_stop_requested()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        raise_if_stop_requested()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        raise_if_stop_requested()


def _trainer(run: RunConfig, arguments: dict, logger, checkpoint, callbacks) -> pl.Trainer:
    return pl.Trainer(
        **arguments,
        logger=logger,
        callbacks=([checkpoint] if checkpoint else []) + [EpochSummary(), StopWhenAsked()] + (callbacks or []),
        enable_checkpointing=checkpoint is not None,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run.output_dir,
        plugins=[AtomicCheckpointIO()],  # checkpoints complete or absent; an unreadable one is one line
    )
