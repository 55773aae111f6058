"""Read recorded runs back from MLflow as a pandas DataFrame (one row per run), for summaries and reports."""

from __future__ import annotations

import pandas as pd

from .tracking import _client, resolve_uri


def load_runs(uri: str = "", experiment: str = "tlbench", filter_string: str = "", include_running: bool = True) -> pd.DataFrame:
    """Columns: run_id, run_name, status, `params.<key>`, `metrics.<name>` (last value), `tags.<key>`."""
    client = _client(resolve_uri(uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    rows = []
    page_token = None
    while True:
        page = client.search_runs([found.experiment_id], filter_string, max_results=1000, page_token=page_token)
        for run in page:
            row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status, "start_time": run.info.start_time}
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        page_token = page.token
        if not page_token:
            break
    frame = pd.DataFrame(rows)
    if not include_running and not frame.empty:
        frame = frame[frame["status"] != "RUNNING"]
    return frame.sort_values("start_time").reset_index(drop=True) if not frame.empty else frame


SUMMARY_COLUMNS = {
    "run_name": "run",
    "status": "status",
    "params.backbone.name": "backbone",
    "params.freeze.name": "freeze",
    "params.adapt.name": "adapt",
    "params.seed": "seed",
    "metrics.val/source_acc": "val source acc (last)",
    "metrics.test/source_acc": "test source acc",
    "metrics.test/target_acc": "test target acc",
    "metrics.selected_epoch": "selected epoch",
}


def summary_table(runs: pd.DataFrame) -> str:
    """A Markdown table of the runs' main results; test numbers are from the checkpoint chosen by `selection`."""
    if runs.empty:
        return "(no runs)"
    present = [c for c in SUMMARY_COLUMNS if c in runs.columns]
    table = runs[present].rename(columns=SUMMARY_COLUMNS)
    return table.to_markdown(index=False, floatfmt=".4f")
