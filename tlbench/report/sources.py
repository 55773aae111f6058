"""Where recorded runs are read from: an MLflow store, or a committed export (`runs.csv`) that lets a
study's tables be rebuilt without the store and without retraining.

An export is one CSV row per run: run_id, run_name, status, start/end time, the run's config params,
the tags the tables read, and `history`: a JSON object metric → [[step, value], ...] for every
per-epoch metric a table, curve or cost file reads. Its first line is a comment holding the study's
layout (which tables, with which options), so `tlbench report --from runs.csv --out DIR` needs no flags.
Params that say where a run was recorded on one machine (tracking URI, output folders) are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ..selection import HISTORY_METRICS, RUN_METRICS
from .errors import ReportError

#: First characters of an export's first line; the JSON layout follows.
LAYOUT_PREFIX = "# tlbench runs export; layout: "
#: Tags kept in an export (prefixes): what tables and tuning records read, nothing about the machine.
KEPT_TAGS = ("compare.", "pruned", "optuna.trial", "failure_reason", "tlbench.parent", "collapsed")
#: Params left out of an export: where the run was written on the machine that made it.
DROPPED_PARAMS = ("tracking", "output_dir", "checkpoint_dir", "resume", "sweep.dir")
#: Params holding a command line's overrides, exported without the ones that name places on this machine.
OVERRIDE_PARAMS = ("params.search.fixed_overrides", "params.sweep.overrides")


#: (metric, panel title); missing metrics (e.g. domain accuracy of methods without a discriminator) are skipped.
CURVES = (
    ("val/source_acc", "source val accuracy (selects)"),
    ("eval/target_test_acc", "target test accuracy (never selects)"),
    ("val/target_entropy", "target val prediction entropy (label-free)"),
    ("train_epoch/source_ce", "source cross-entropy (train, epoch mean)"),
    ("train_epoch/domain_acc", "domain discriminator accuracy (train)"),
    ("train_epoch/dann_lambda", "λ (gradient reversal)"),
    ("train_epoch/transfer_loss", "adaptation loss (train)"),
)


def existing_store_client(uri: str):
    """`tracking.client_for` a store that must exist: a sqlite path that does not is an error, not a new
    empty database."""
    from ..tracking import client_for, sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise ReportError(f"no MLflow store at {path} (uri {uri}); train first or pass --uri")
    return client_for(uri)


def check_experiment(client, uri: str, experiment: str) -> None:
    if client.get_experiment_by_name(experiment) is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"experiment '{experiment}' not found in {uri}; existing: {', '.join(names) or 'none'}")


def exported_metrics() -> tuple[str, ...]:
    """Every per-epoch metric the report reads: selection rules' histories and the learning curves."""
    return tuple(sorted(set(HISTORY_METRICS) | {m for m, _ in CURVES} | set(RUN_METRICS)))


class RunSource(Protocol):
    description: str

    def runs(self) -> pd.DataFrame:
        """One row per run: run_id, run_name, status, start_time, end_time, params.*, tags.*."""

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """(step, value) points of one metric in logging order."""


@dataclass
class StoreSource:
    """Runs of one experiment in an MLflow store (optionally filtered)."""

    uri: str
    experiment: str
    filter_string: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        from ..tracking import resolve_uri

        self.uri = resolve_uri(self.uri)
        self.description = self.description or f"experiment '{self.experiment}' in {self.uri}"

    @property
    def client(self):
        return existing_store_client(self.uri)

    def runs(self) -> pd.DataFrame:
        from ..runs import load_runs

        check_experiment(self.client, self.uri, self.experiment)
        try:
            return load_runs(self.uri, self.experiment, self.filter_string)
        except Exception as exc:  # MLflow rejects the filter string
            if not self.filter_string:
                raise
            raise ReportError(f"--filter {self.filter_string!r}: {str(exc).splitlines()[0]}") from None

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        points = sorted(self.client.get_metric_history(run_id, metric), key=lambda p: (p.timestamp, p.step))
        return [(int(p.step), float(p.value)) for p in points]


@dataclass
class ExportSource:
    """Runs from an export written by `export_runs`."""

    path: Path
    layout: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        try:
            with self.path.open() as handle:
                first = handle.readline()
                if not first.startswith(LAYOUT_PREFIX):
                    raise ReportError(f"--from {self.path}: not a tlbench runs export (its first line must start with '{LAYOUT_PREFIX.strip()}')")
                self.layout = json.loads(first[len(LAYOUT_PREFIX) :])
                self._frame = pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[""])
        except OSError as exc:
            raise ReportError(f"--from {self.path}: cannot read ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, pd.errors.ParserError) as exc:
            raise ReportError(f"--from {self.path}: damaged export ({str(exc).splitlines()[0]})") from None
        self._histories = {row["run_id"]: json.loads(row["history"]) for _, row in self._frame.iterrows()}
        self.description = self.description or f"export {self.path.name}"

    def runs(self) -> pd.DataFrame:
        frame = self._frame.drop(columns=["history"]).copy()
        for column in ("start_time", "end_time"):
            frame[column] = pd.to_numeric(frame[column])
        return frame

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        return [(int(s), float(v)) for s, v in self._histories.get(run_id, {}).get(metric, [])]


def _kept(column: str) -> bool:
    if column.startswith("params."):
        key = column[len("params.") :]
        return not any(key == p or key.startswith(p + ".") for p in DROPPED_PARAMS)
    if column.startswith("tags."):
        return column[len("tags.") :].startswith(KEPT_TAGS)
    return column in ("run_id", "run_name", "status", "start_time", "end_time")


def _without_machine_overrides(overrides: Any) -> Any:
    """A search or sweep parent's override string names the store's path on this machine; keep the rest."""
    if not isinstance(overrides, str):
        return overrides
    return " ".join(w for w in overrides.split() if not w.split("=", 1)[0].lstrip("+~").startswith(DROPPED_PARAMS))


def export_runs(source: RunSource, path: Path, layout: dict[str, Any]) -> Path:
    """Write `source`'s runs (all statuses: the tuning record counts pruned and failed trials too) to
    `path` with `layout` in the first line. Rows and columns are sorted, so an export of the same runs is
    the same file."""
    runs = source.runs()
    if runs.empty:
        raise ReportError(f"nothing to export: no runs in {source.description}")
    runs = runs[[c for c in runs.columns if _kept(c)]].sort_values(["start_time", "run_id"]).reset_index(drop=True)
    for column in OVERRIDE_PARAMS:
        if column in runs:
            runs[column] = runs[column].map(_without_machine_overrides)
    metrics = exported_metrics()
    histories = []
    for run_id in runs["run_id"]:
        points = {m: source.history(run_id, m) for m in metrics}
        histories.append(json.dumps({m: [[s, v] for s, v in p] for m, p in points.items() if p}, separators=(",", ":")))
    fixed = ["run_id", "run_name", "status", "start_time", "end_time"]
    runs = runs[fixed + sorted(c for c in runs.columns if c not in fixed)].assign(history=histories)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        handle.write(LAYOUT_PREFIX + json.dumps(layout, sort_keys=True) + "\n")
        runs.to_csv(handle, index=False, lineterminator="\n")
    return path
