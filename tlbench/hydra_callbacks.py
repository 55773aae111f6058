"""Hydra callbacks: sweep progress while it runs, and a results table when a multirun ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_size(config: DictConfig) -> int | None:
    """Number of jobs of a grid sweep: the product of the sweep overrides' lengths (None if unknown)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = list(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params") or {}
        overrides += [f"{key}={value}" for key, value in params.items()]
        total = 1
        for override in OverridesParser.create().parse_overrides(overrides):
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
        return total
    except Exception:  # a sweeper with its own notion of jobs (e.g. a search): no total
        return None


def seed_averaged_table(uri: str, experiment: str, sweep_dir: str, rule: str) -> str | None:
    """The sweep as a paper table (rows = the config keys the sweep varies, seeds averaged, gains over a
    source-only/scratch baseline with a paired test), when some configuration has at least two seeds."""
    from .report.collect import collect
    from .report.tables import paper_table

    frame = collect(uri, experiment, f"tags.sweep_dir = '{sweep_dir}'", rules=(rule,))
    if frame.empty or "seed" not in frame.columns or frame.groupby("config_id")["seed"].nunique().max() < 2:
        return None
    varying = [k for k in frame.attrs["config_keys"] if frame[k].astype(str).nunique() > 1]
    return paper_table(frame, varying or ["adapt.name"], "data.name", rule).to_markdown()


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.started = 0.0
        self.done = 0
        self.total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.total = sweep_size(config)


    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        self.done += 1
        elapsed = time.time() - self.started
        per_run = elapsed / self.done
        total = f"/{self.total}" if self.total else ""
        eta = f", ETA {per_run * (self.total - self.done):.0f}s" if self.total else ""
        print(f"[tlbench] sweep: {self.done}{total} run(s) done in {elapsed:.0f}s ({per_run:.0f}s per run{eta})", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .runs import load_runs, summary_table
        from .tracking import resolve_uri

        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        uri = resolve_uri(config.tracking.uri)
        runs = load_runs(uri, config.tracking.experiment, f"tags.sweep_dir = '{sweep_dir}'")
        print(f"\n[tlbench] {len(runs)} run(s) of this sweep (test accuracies of the checkpoint chosen by 'selection'):")
        print(summary_table(runs))
        averaged = seed_averaged_table(uri, config.tracking.experiment, sweep_dir, str(config.selection))
        if averaged:
            print("\n[tlbench] mean ± std over seeds, and each gain over its baseline paired on seed:\n" + averaged)
        print(f"\nOpen them in the MLflow UI:  mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
