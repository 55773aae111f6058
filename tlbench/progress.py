"""Concise progress: one line per epoch with the numbers that matter, for logs and non-interactive
terminals where Lightning's progress bars would print thousands of lines."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

log = logging.getLogger("tlbench")
SHOWN = ("val/source_acc", "val/target_entropy", "train/loss")


class EpochSummary(pl.Callback):
    """Logs `epoch k/N` (1-based, as `selected epoch` in the summary table) after each validation.

    With a progress bar on screen the line is written above the bar instead of into it, and the bar
    does not show `v_num` (the tail of the MLflow run id, which says nothing about progress)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is not None and not getattr(bar, "_tlbench_without_version", False):
            shown = bar.get_metrics

            def without_version(trainer, pl_module):
                metrics = shown(trainer, pl_module)
                metrics.pop("v_num", None)
                return metrics

            bar.get_metrics = without_version
            bar._tlbench_without_version = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.time()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not hasattr(self, "started"):
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{name}={float(metrics[name]):.4f}" for name in SHOWN if name in metrics)
        args = ("epoch %d/%d  %s  (%.0fs)", trainer.current_epoch + 1, trainer.max_epochs, shown, time.time() - self.started)
        if not getattr(trainer.progress_bar_callback, "is_enabled", False):
            log.info(*args)
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        # console handlers print through tqdm.write; a logger without one would gain one (a second copy)
        consoles = [lg for lg in (logging.root, log) if any(type(h) is logging.StreamHandler for h in lg.handlers)]
        with logging_redirect_tqdm(consoles):
            log.info(*args)
