"""Concise progress: one line per epoch with the numbers that matter, for logs and non-interactive
terminals where Lightning's progress bars would print thousands of lines."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

log = logging.getLogger("tlbench")
SHOWN = ("val/source_acc", "val/target_entropy", "train/loss")


class EpochSummary(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.time()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not hasattr(self, "started"):
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{name}={float(metrics[name]):.4f}" for name in SHOWN if name in metrics)
        log.info("epoch %d/%d  %s  (%.0fs)", trainer.current_epoch + 1, trainer.max_epochs, shown, time.time() - self.started)
