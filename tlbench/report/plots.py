"""PNG figures of one rule's results (matplotlib Agg, so they render on headless machines).

Both plots go through `summarize`, so a figure aggregates exactly like the tables and refuses to
average different configurations into one bar or point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from .selection import DEFAULT_RULE, get_rule
from .tables import labels, parse_keys, sort_labels, summarize

BUDGET_KEY = "data.labels_per_class"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(rule_name: str) -> str:
    rule = get_rule(rule_name)
    return f"rule: {rule.name}" + (" (ORACLE: target labels)" if rule.uses_target_labels else "")


def bar_plot(
    frame: pd.DataFrame,
    path: str | Path,
    rows: str | Iterable[str] = "adapt.name",
    cols: str | Iterable[str] = "data.name",
    rule: str = DEFAULT_RULE,
) -> Path:
    """Grouped bars: one group per column value (task), one bar per row value (method), error bar = seed std."""
    row_keys, col_keys = parse_keys(rows), parse_keys(cols)
    table = summarize(frame, row_keys + col_keys, rule)
    table = table.assign(row=labels(table, row_keys), col=labels(table, col_keys))
    methods, tasks = sort_labels(table["row"]), sort_labels(table["col"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 2 + 0.5 * len(tasks) * len(methods)), 3.6))
    width = 0.8 / max(1, len(methods))
    lookup = table.set_index(["row", "col"])
    for i, method in enumerate(methods):
        xs, means, stds = [], [], []
        for j, task in enumerate(tasks):
            if (method, task) in lookup.index:
                cell = lookup.loc[(method, task)]
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                means.append(cell["mean"])
                stds.append(0.0 if pd.isna(cell["std"]) else cell["std"])
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20 if len(tasks) > 4 else 0)
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title(_title(rule))
    ax.legend(fontsize="small", title=" / ".join(row_keys))
    return _save(fig, plt, path)


def budget_plot(
    frame: pd.DataFrame,
    path: str | Path,
    lines: str | Iterable[str] = "freeze.name",
    panels: str | Iterable[str] = "data.name",
    rule: str = DEFAULT_RULE,
    budget: str = BUDGET_KEY,
) -> Path | None:
    """Accuracy vs label budget, one line per `lines` value, one panel per `panels` value; None when
    fewer than two numeric budgets were recorded (runs with all labels, `None`, are drawn as "all").
    With `panels` equal to the budget key (a table with budgets as columns) there is one panel."""
    if budget not in frame.columns or pd.to_numeric(frame[budget], errors="coerce").nunique() < 2:
        return None
    line_keys = parse_keys(lines)
    panel_keys = [k for k in parse_keys(panels) if k != budget and k not in line_keys]
    table = summarize(frame, panel_keys + line_keys + [budget], rule)
    panel = labels(table, panel_keys) if panel_keys else "all runs"
    table = table.assign(x=pd.to_numeric(table[budget], errors="coerce"), line=labels(table, line_keys), panel=panel)
    all_labels = table[budget].isna() | table[budget].astype(str).isin(["None", "null", ""])
    all_at = 2 * table["x"].max()  # runs with every label ("all") sit right of the largest budget
    table.loc[all_labels, "x"] = all_at
    table = table.dropna(subset=["x"])
    panel_names = sort_labels(table["panel"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panel_names), figsize=(4.2 * len(panel_names), 3.4), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panel_names):
        for line, points in table[table["panel"] == panel].groupby("line", sort=True):
            points = points.sort_values("x")
            ax.errorbar(points["x"], points["mean"], yerr=points["std"].fillna(0.0), marker="o", capsize=3, label=line)
        budgets = sorted(table.loc[table["panel"] == panel, "x"].unique())
        ax.set_xscale("log")
        ax.set_xticks(budgets, ["all" if b == all_at else f"{b:g}" for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel(budget)
        ax.set_title(f"{panel} — {_title(rule)}" if panel_keys else _title(rule), fontsize="small")
    axes[0][0].set_ylabel("target test accuracy (%)")
    axes[0][-1].legend(fontsize="small", title=" / ".join(line_keys))
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
