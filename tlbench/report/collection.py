"""Recorded runs → a tidy DataFrame with one row per (run, selection rule).

Only FINISHED runs by default: a FAILED, KILLED or still RUNNING run has a partial history and would
silently pull a mean down (or up). Excluded runs are counted in `frame.attrs["excluded"]` so every table
can say how many it left out. The same configuration and seed recorded twice counts once (the newest),
so `n` is a number of seeds, not of attempts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import pandas as pd

from ..collapse import COLLAPSED_COLUMN
from ..selection import LEAVE_ONE_OUT, TEST_METRIC, Choice
from .errors import ReportError
from .selection import HISTORY_METRICS, epoch_table, get_rule
from .sources import StoreSource, check_experiment, existing_store_client

DEFAULT_RULES = ("source_val", "oracle", "target_entropy")
#: Params that do not make another configuration: the seed (aggregated over), the run's own checkpoint
#: rule (the per-epoch histories do not depend on it; rules are re-applied here) and data summaries.
NOT_CONFIG = ("seed", "selection", "data_summary", "data.holdout")

#: Keys in which a transfer run may differ from its from-scratch baseline.
BASELINE_FREE = ("freeze", "backbone.weights")
SCRATCH = "scratch"
#: Tags carried into the frame: which comparison, arm and stage a run belongs to (tlbench compare).
COMPARE_TAGS = "tags.compare."
RESULT_COLUMNS = [
    "run_id",
    "run_name",
    "status",
    "start_time",
    "rule",
    "uses_target_labels",
    "target_acc",
    "source_acc",
    "selected_step",
    "selected_epoch",
    "epochs",
    "config_id",
    "baseline_id",
    "is_scratch",
    "task",
]


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _fingerprint(row: pd.Series, keys: list[str]) -> str:
    values = {k: (None if pd.isna(row[k]) else str(row[k])) for k in keys}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def sweep_filter(uri: str, experiment: str, sweep: str) -> tuple[str, str]:
    """The filter strings (a union) for the runs of a sweep or search — its child runs and the finished
    runs a skip_done sweep reused: `latest` (the newest parent run in the experiment), a parent run id, or
    a parent run name."""
    client = existing_store_client(uri)
    check_experiment(client, uri, experiment)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parents = client.search_runs([experiment_id], "tags.`tlbench.parent` != ''", max_results=200, order_by=["attributes.start_time DESC"])
    if sweep == "latest":
        chosen = parents[:1]
    else:
        chosen = [p for p in parents if sweep in (p.info.run_id, p.info.run_name)]
    if not chosen:
        known = ", ".join(f"{p.info.run_name} ({p.info.run_id[:8]})" for p in parents[:5]) or "none"
        raise ReportError(f"--sweep {sweep}: no sweep or search of that id or name in experiment '{experiment}'; newest: {known}")
    from ..sweep_run import reused_filter

    return f"tags.mlflow.parentRunId = '{chosen[0].info.run_id}'", reused_filter(chosen[0].info.run_id)


def collect(
    uri: str = "",
    experiment: str = "tlbench",
    filter_string: str | tuple[str, ...] = "",
    rules: Iterable[str] = DEFAULT_RULES,
    statuses: Iterable[str] = ("FINISHED",),
    run_metrics: Iterable[str] = (),
) -> pd.DataFrame:
    """`collect_runs` of the runs of `experiment` in the MLflow store at `uri` (optionally filtered)."""
    return collect_runs(StoreSource(uri, experiment, filter_string), rules, statuses, run_metrics)


def collect_runs(source, rules: Iterable[str] = DEFAULT_RULES, statuses: Iterable[str] = ("FINISHED",), run_metrics: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (run, rule) of the runs in `source` (a store or an export, see `sources`): config
    columns (flattened keys, e.g. `adapt.name`), `target_acc` (target test accuracy at the rule's epoch),
    `source_acc` (source val accuracy there), `selected_step/epoch`.

    `attrs`: `config_keys` (params that tell configurations apart), `excluded` {status: count},
    `excluded_runs` [(name, status, failure_reason)], `duplicates` (older repeats dropped),
    `missing` [(run_name, rule)] where a run lacks the rule's metric (its accuracies are NaN).
    `run_metrics`: metrics measured once per run (e.g. analysis/a_distance), each a column `run:<name>`
    holding the run's last recorded value (NaN without one).
    """
    from ..tracking import NON_SEMANTIC_KEYS

    rule_objects = [get_rule(name) for name in rules]
    runs = source.runs()
    attrs = {
        "uri": getattr(source, "uri", str(getattr(source, "path", ""))),
        "experiment": getattr(source, "experiment", ""),
        "filter": getattr(source, "filter_string", ""),
        "config_keys": [],
        "excluded": {},
        "excluded_runs": [],
        "duplicates": 0,
        "missing": [],
    }
    if "tags.tlbench.parent" in runs.columns:  # sweep and search parents hold children, not results
        runs = runs[runs["tags.tlbench.parent"].isna()]
    if runs.empty:
        return _frame([], [], attrs)

    keep = runs["status"].isin(list(statuses))
    dropped = runs[~keep]
    attrs["excluded"] = {str(k): int(v) for k, v in dropped["status"].value_counts().sort_index().items()}
    attrs["excluded_runs"] = [
        (r["run_name"], r["status"], r.get("tags.failure_reason") if isinstance(r.get("tags.failure_reason"), str) else "") for _, r in dropped.iterrows()
    ]
    params = sorted(c[len("params.") :] for c in runs.columns if c.startswith("params."))
    compare_tags = sorted(c for c in runs.columns if c.startswith(COMPARE_TAGS))
    # carried into every row, but not part of a run's identity (runs recorded before the tag have none)
    carried = compare_tags + ([COLLAPSED_COLUMN] if COLLAPSED_COLUMN in runs.columns else [])
    runs = runs[keep].rename(columns=lambda c: c[len("params.") :] if c.startswith("params.") else c)
    if runs.empty:
        return _frame([], params, attrs)
    config_keys = [k for k in params if not _under(k, NOT_CONFIG + tuple(NON_SEMANTIC_KEYS))]
    attrs["config_keys"] = config_keys
    runs = runs.assign(
        config_id=runs.apply(_fingerprint, axis=1, keys=config_keys),
        baseline_id=runs.apply(_fingerprint, axis=1, keys=[k for k in config_keys if not _under(k, BASELINE_FREE)]),
    )
    seed = runs["seed"] if "seed" in runs.columns else pd.Series("", index=runs.index)
    holdout = runs["data.holdout"].map(_held_out) if "data.holdout" in runs.columns else pd.Series("", index=runs.index)
    before = len(runs)
    # a comparison's stages may run one configuration and seed twice on purpose (a sensitivity point at the tuned value)
    runs = runs.assign(_seed=seed, _holdout=holdout).sort_values("start_time")
    runs = runs.drop_duplicates(["config_id", "_seed", "_holdout", *compare_tags], keep="last")
    attrs["duplicates"] = before - len(runs)
    if COLLAPSED_COLUMN in runs.columns:
        attrs["collapsed"] = sorted(runs.loc[runs[COLLAPSED_COLUMN] == "true", "run_name"].astype(str))

    rows = []
    histories = {run_id: epoch_table({m: source.history(run_id, m) for m in HISTORY_METRICS}) for run_id in runs["run_id"]}
    for _, run in runs.iterrows():
        history = histories[run["run_id"]]
        if run["_holdout"]:  # held-out runs count only as a group (below)
            continue
        base = _columns(run, history, params + carried)
        for metric in run_metrics:
            points = source.history(run["run_id"], metric)
            base[f"run:{metric}"] = float(sorted(points)[-1][1]) if points else float("nan")
        for rule in rule_objects:
            if rule.name == LEAVE_ONE_OUT:  # a run on every source has no held-out domain
                continue
            choice = rule.choose(history)
            if choice is None:
                attrs["missing"].append((run["run_name"], rule.name))
            rows.append({**base, **_result(rule.name, rule.uses_target_labels, choice)})
    if LEAVE_ONE_OUT in [r.name for r in rule_objects]:
        rows += _leave_one_out_rows(runs[runs["_holdout"] != ""], histories, params + carried)
    return _frame(rows, params + carried + [f"run:{m}" for m in run_metrics], attrs)


def _columns(run: pd.Series, history: pd.DataFrame, columns: list[str]) -> dict:
    """What every row of `run` carries whatever the rule: identity, configuration and task."""
    return {
        "run_id": run["run_id"],
        "run_name": run["run_name"],
        "status": run["status"],
        "start_time": run["start_time"],
        "epochs": len(history),
        "config_id": run["config_id"],
        "baseline_id": run["baseline_id"],
        "is_scratch": run.get("freeze.name") == SCRATCH,
        "task": f"{run['data.source']}→{run['data.target']}" if {"data.source", "data.target"} <= set(run.index) else None,
        **{k: run[k] for k in columns},
    }


def _result(rule: str, uses_target_labels: bool, choice: Choice | None) -> dict:
    return {
        "rule": rule,
        "uses_target_labels": uses_target_labels,
        "target_acc": choice.target_acc if choice else float("nan"),
        "source_acc": choice.source_acc if choice else float("nan"),
        "selected_step": choice.step if choice else None,
        "selected_epoch": choice.epoch if choice else None,
    }


def _held_out(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) or str(value) in ("", "None") else str(value)


def leave_one_out_choice(histories: list[pd.DataFrame]) -> Choice | None:
    """DomainBed's leave-one-domain-out choice over the runs of one configuration and seed that each held
    out one source domain: the epoch with the best mean held-out accuracy (earliest of ties, over the
    epochs every run has), reporting the runs' mean target and source accuracy there."""
    metric = get_rule(LEAVE_ONE_OUT).metric
    if not histories or any(metric not in h.columns or h.empty for h in histories):
        return None
    epochs = min(len(h) for h in histories)
    curves = pd.concat([h[metric].iloc[:epochs].reset_index(drop=True) for h in histories], axis=1)
    mean = curves.mean(axis=1)
    if mean.dropna().empty:
        return None
    position = int(mean.index[mean == mean.max()][0])
    at = [h.iloc[position] for h in histories]
    source = [row.get("val/source_acc", float("nan")) for row in at]
    return Choice(
        LEAVE_ONE_OUT, int(histories[0].index[position]), position + 1, float(pd.Series([r[TEST_METRIC] for r in at]).mean()), float(pd.Series(source).mean())
    )


def _leave_one_out_rows(runs: pd.DataFrame, histories: dict, columns: list[str]) -> list[dict]:
    """One `leave_one_out` row per configuration and seed from its held-out runs (its first run's columns,
    `data.holdout` listing every domain held out)."""
    rows = []
    for _, group in runs.groupby(["config_id", "_seed"], sort=False):
        first = group.iloc[0]
        choice = leave_one_out_choice([histories[r] for r in group["run_id"]])
        rows.append(
            {
                **_columns(first, histories[first["run_id"]], columns),
                "start_time": group["start_time"].max(),
                "data.holdout": "|".join(sorted(group["_holdout"])),
                **_result(LEAVE_ONE_OUT, False, choice),
            }
        )
    return rows


def _frame(rows: list[dict], params: list[str], attrs: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS + [p for p in params if p not in RESULT_COLUMNS])
    frame.attrs.update(attrs)
    return frame


def exclusion_notes(attrs: dict) -> list[str]:
    """Human-readable lines on what a table left out, or counts although it failed, for captions and the CLI."""
    notes = []
    if attrs.get("excluded"):
        total = sum(attrs["excluded"].values())
        parts = ", ".join(f"{n} {status}" for status, n in attrs["excluded"].items())
        notes.append(f"Excluded {total} run(s) that did not finish ({parts}).")
    if attrs.get("duplicates"):
        notes.append(f"Dropped {attrs['duplicates']} older repeat(s) of the same configuration and seed.")
    if attrs.get("missing"):
        notes.append(f"{len(attrs['missing'])} (run, rule) pair(s) had no history for the rule's metric and are left out.")
    if attrs.get("collapsed"):
        names = attrs["collapsed"]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        notes.append(f"{len(names)} run(s) collapsed, predicting one class (tag `collapsed`), and are counted as they are: {shown}.")
    return notes
