"""Read recorded runs back from MLflow as a pandas DataFrame (one row per run), for summaries and reports."""

from __future__ import annotations

import pandas as pd

from .collapse import COLLAPSED_COLUMN
from .tracking import client_for, resolve_uri


def load_runs(uri: str = "", experiment: str = "tlbench", filter_string: str | tuple[str, ...] = "", include_running: bool = True) -> pd.DataFrame:
    """Columns: run_id, run_name, status, `params.<key>`, `metrics.<name>` (last value), `tags.<key>`.
    A tuple of filter strings is their union (MLflow's filter language has no OR)."""
    client = client_for(resolve_uri(uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    rows, seen = [], set()
    for one_filter in filter_string if isinstance(filter_string, tuple) else (filter_string,):
        _collect_rows(client, found.experiment_id, one_filter, rows, seen)
    frame = pd.DataFrame(rows)
    if not include_running and not frame.empty:
        frame = frame[frame["status"] != "RUNNING"]
    return frame.sort_values("start_time").reset_index(drop=True) if not frame.empty else frame


def _collect_rows(client, experiment_id: str, filter_string: str, rows: list, seen: set) -> None:
    page_token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=page_token)
        for run in page:
            if run.info.run_id in seen:
                continue
            seen.add(run.info.run_id)
            row = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
            }
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        page_token = page.token
        if not page_token:
            return


#: Widest line of `summary_table`: a terminal's width; run names are cut to fit, the rest is in MLflow.
SUMMARY_WIDTH = 120
#: Metric → column header: test numbers of the checkpoint chosen by `selection` (per-epoch validation
#: numbers are in the epoch log lines and in MLflow).
SUMMARY_METRICS = {
    "metrics.test/target_acc": "test target acc",
    "metrics.test/source_acc": "test source acc",
}


#: Tag of runs whose recorded epochs are numbers (1 = the first); runs recorded before it carry
#: Lightning's 0-based index, which `epoch_number` converts.
EPOCHS_TAG = "epochs_counted_from"


def epoch_number(selected_epoch: float, counted_from: object = "1") -> str:
    """The recorded `selected_epoch` as the progress log counts it (epoch 1/N), for runs of either numbering."""
    if pd.isna(selected_epoch):
        return ""
    return str(int(selected_epoch) + (0 if str(counted_from) == "1" else 1))


def summary_table(runs: pd.DataFrame, width: int = SUMMARY_WIDTH) -> str:
    """A Markdown table of the runs' main results, at most `width` characters wide: the run name (which
    says what varies), status (with "collapsed", collapse.py), test accuracies of the checkpoint chosen by
    `selection`, and its epoch."""
    if runs.empty:
        return "(no runs)"
    columns = {"status": runs["status"].astype(str).tolist()}
    if COLLAPSED_COLUMN in runs.columns:  # a collapsed run's number is a failure, not a result
        columns["status"] = [f"{status} (collapsed)" if flag == "true" else status for status, flag in zip(columns["status"], runs[COLLAPSED_COLUMN])]
    for key, header in SUMMARY_METRICS.items():
        if key in runs.columns:
            columns[header] = ["" if pd.isna(v) else f"{v:.4f}" for v in runs[key]]
    if "metrics.selected_epoch" in runs.columns:
        numbering = runs[f"tags.{EPOCHS_TAG}"] if f"tags.{EPOCHS_TAG}" in runs.columns else [None] * len(runs)
        columns["selected epoch"] = [epoch_number(v, base) for v, base in zip(runs["metrics.selected_epoch"], numbering)]
    widths = {h: max(len(h), *(len(v) for v in values)) for h, values in columns.items()}
    room = max(width - sum(w + 3 for w in widths.values()) - 4, len("run"))  # "| name |" + " value |" each
    names = [n if len(n) <= room else n[: room - 1] + "…" for n in runs["run_name"].fillna("").astype(str)]
    widths = {"run": max(len("run"), *(len(n) for n in names)), **widths}
    columns = {"run": names, **columns}
    numeric = set(SUMMARY_METRICS.values()) | {"selected epoch"}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return "\n".join(
        [
            line([h.ljust(w) for h, w in widths.items()]),
            line([("-" * (w - 1) + ":") if h in numeric else (":" + "-" * (w - 1)) for h, w in widths.items()]),
            *(line([v.rjust(widths[h]) if h in numeric else v.ljust(widths[h]) for h, v in zip(columns, row)]) for row in zip(*columns.values())),
        ]
    )
