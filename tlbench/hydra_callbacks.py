"""Hydra callbacks: sweep progress while it runs, and a results table when a multirun ends."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .errors import TlbenchError


def _sweep_overrides(config: DictConfig) -> list:
    """The multirun's parsed overrides: the command line's, then a preset's sweep params the command line
    does not replace (Hydra's rule)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = parser.parse_overrides(list(config.hydra.overrides.task))
    given = {override.key_or_group for override in overrides}
    params = config.hydra.sweeper.get("params") or {}
    return overrides + parser.parse_overrides([f"{key}={value}" for key, value in params.items() if key not in given])


def sweep_size(config: DictConfig) -> int | None:
    """Number of jobs of a grid sweep: the product of the sweep overrides' lengths (None if unknown)."""
    try:
        total = 1
        for override in _sweep_overrides(config):
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
        return total
    except Exception:  # a sweeper with its own notion of jobs (e.g. a search): no total
        return None


def swept_keys(config: DictConfig) -> list[str]:
    """The config keys (or groups) a grid sweep gives several values, in command-line order: what tells
    its runs apart."""
    try:
        return [override.key_or_group.lstrip("+~") for override in _sweep_overrides(config) if override.is_sweep_override()]
    except Exception:
        return []


def sweep_rows(frame) -> list[str]:
    """The config keys a sweep varies (its table's rows), `adapt.name` if none: what the end-of-sweep table
    and the printed `tlbench report` command both group by."""
    from .report.tables import as_text

    def varies(key: str) -> bool:  # a method's own hyperparameter varies by itself only within one method
        if key.startswith("adapt.") and key != "adapt.name":
            return any(as_text(group[key]).nunique() > 1 for _, group in frame.groupby("adapt.name"))
        return as_text(frame[key]).nunique() > 1

    return [k for k in frame.attrs.get("config_keys", []) if k != "data.name" and varies(k)] or ["adapt.name"]


def sweep_frame(uri: str, experiment: str, sweep_filter: tuple[str, ...], rule: str):
    from .report.collection import collect

    return collect(uri, experiment, sweep_filter, rules=(rule,))


def seed_averaged_table(uri: str, experiment: str, sweep_filter: tuple[str, ...], rule: str, frame=None) -> str | None:
    """The sweep as a paper table (rows = the config keys the sweep varies, seeds averaged, gains over a
    source-only/scratch baseline with a paired test), when some configuration has at least two seeds."""
    from .report.tables import paper_table

    frame = sweep_frame(uri, experiment, sweep_filter, rule) if frame is None else frame
    if frame.empty or "seed" not in frame.columns or frame.groupby("config_id")["seed"].nunique().max() < 2:
        return None
    return paper_table(frame, sweep_rows(frame), "data.name", rule).to_markdown()


def _owns_parent_runs(config: DictConfig) -> bool:
    """A search sweeper records its own parent run and trials; a grid sweep gets one from us."""
    return "TlbenchOptunaSweeper" in str(config.hydra.sweeper.get("_target_", ""))


def _in_multirun(config: DictConfig) -> bool:
    return config.hydra.mode is not None and str(config.hydra.mode) == "RunMode.MULTIRUN"


class SweepSummary(Callback):
    """Opens the sweep's MLflow parent run, prints progress after each job (counted from the store, so
    it is right when jobs finish out of order or in other processes), and at the end prints the results
    table, records it on the parent and closes the parent. `failed_jobs` (module-level in sweep_run)
    tells the CLI to exit non-zero."""

    def __init__(self) -> None:
        self.total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from . import sweep_run

        self.total = sweep_size(config)
        if not _owns_parent_runs(config):
            uri, experiment, _ = sweep_run.tracking_of(config)
            sweep_run.plan_sweep(uri, experiment, sweep_run.sweep_dir_of(config), list(config.hydra.overrides.task), self.total, swept_keys(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from . import sweep_run

        if _in_multirun(config) and not _owns_parent_runs(config):
            try:
                sweep_run.ensure_parent(*sweep_run.tracking_of(config), sweep_run.sweep_dir_of(config))
            except TlbenchError:  # the store is unreachable: the job says so in one line and fails
                pass

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        from . import sweep_run

        if not _in_multirun(config) or _owns_parent_runs(config):
            return
        sweep_run.mark_job_done(config.hydra.runtime.output_dir)
        uri, experiment, _ = sweep_run.tracking_of(config)
        sweep_dir = sweep_run.sweep_dir_of(config)
        parent = sweep_run.find_parent(sweep_dir)
        try:
            line = sweep_run.progress_line(uri, parent, sweep_dir) if parent else None
        except TlbenchError:  # the store went away: the job's own line said why; the sweep's end counts it
            line = None
        if line:
            print(f"[tlbench] {line}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from . import sweep_run

        sweep_dir = sweep_run.sweep_dir_of(config)
        failed_here = sweep_run.failed_job_count(sweep_dir)
        try:
            self._summarise(config, sweep_dir)
        except TlbenchError as exc:  # the store is unreachable now: what the jobs said is what we know
            sweep_run.failed_jobs = max(failed_here, 1)
            print(
                f"tlbench: error: the sweep's end could not read the store ({exc}); {failed_here} of {self.total or '?'} "
                "job(s) failed; when the store is back, the same command with tracking.skip_done=true runs only "
                "what did not finish",
                file=sys.stderr,
                flush=True,
            )
            return
        sweep_run.failed_jobs = max(sweep_run.failed_jobs, failed_here)

    def _summarise(self, config: DictConfig, sweep_dir: str) -> None:
        from . import sweep_run
        from .runs import load_runs, summary_table

        uri, experiment, _ = sweep_run.tracking_of(config)
        parent = None if _owns_parent_runs(config) else sweep_run.find_parent(sweep_dir)
        runs = load_runs(uri, experiment, sweep_run.sweep_runs_filter(parent, sweep_dir))
        table = summary_table(runs)
        print(f"\n[tlbench] {len(runs)} run(s) of this sweep (test accuracies of the checkpoint chosen by 'selection'):")
        print(table)
        frame = sweep_frame(uri, experiment, sweep_run.sweep_runs_filter(parent, sweep_dir), str(config.selection))
        averaged = seed_averaged_table(uri, experiment, (), str(config.selection), frame=frame)
        if averaged:
            table += "\n\nmean ± std over seeds, and each gain over its baseline paired on seed:\n" + averaged
            print("\n[tlbench] mean ± std over seeds, and each gain over its baseline paired on seed:\n" + averaged)
        if parent:
            sweep_run.failed_jobs = sweep_run.close_sweep_run(uri, parent, table, runs, self.total)
            failures = sweep_run.failure_lines(runs, self.total)
            if failures:
                print("\n[tlbench] " + "; ".join(failures), flush=True)
        from .tracking import ui_hint

        print(f"\nOpen them in the MLflow UI:  {ui_hint(uri)}")
        if parent:
            rows = ",".join(sweep_rows(frame)) if not frame.empty else "adapt.name"
            rule = f" --rule {config.selection}" if str(config.selection) != "source_val" else ""
            where = f" --uri {uri}" if str(config.tracking.uri or "") else ""
            print(f"Tables of this sweep:        tlbench report{where} --experiment {experiment} --sweep {parent} --rows {rows}{rule}")
