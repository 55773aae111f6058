"""Hydra callbacks: sweep progress while it runs, and a results table when a multirun ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.started = 0.0
        self.done = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        self.done += 1
        elapsed = time.time() - self.started
        print(f"[tlbench] sweep: {self.done} run(s) done in {elapsed:.0f}s ({elapsed / self.done:.0f}s per run)", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .runs import load_runs, summary_table
        from .tracking import resolve_uri

        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        uri = resolve_uri(config.tracking.uri)
        runs = load_runs(uri, config.tracking.experiment, f"tags.sweep_dir = '{sweep_dir}'")
        print(f"\n[tlbench] {len(runs)} run(s) of this sweep (test accuracies of the checkpoint chosen by 'selection'):")
        print(summary_table(runs))
        print(f"\nOpen them in the MLflow UI:  mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
