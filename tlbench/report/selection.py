"""Model selection on recorded runs: metric histories → epoch tables, to which a rule (tlbench.selection)
is applied after the fact.

Every run evaluates the target TEST set at every epoch (`eval/target_test_acc`) but never selects on
it; a rule looks only at its own validation metric, picks an epoch, and reports the target test accuracy
of that epoch. That lets one training run answer "what would source-val / entropy / oracle selection
have given?" without retraining. Tables print oracle numbers only in their own, labelled table.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from ..selection import DEFAULT_RULE, HISTORY_METRICS, RULES, TEST_METRIC, Choice, Rule
from .errors import ReportError

__all__ = ["DEFAULT_RULE", "HISTORY_METRICS", "RULES", "Choice", "Rule", "epoch_table", "get_rule"]


def get_rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise ReportError(f"rule '{name}' is unknown; choose one of: {', '.join(RULES)}") from None


def epoch_table(histories: Mapping[str, Iterable]) -> pd.DataFrame:
    """Metric histories → one row per epoch (index = step), one column per metric.

    Values are MLflow `Metric` objects or (step, value) pairs. Epochs are the steps where the target test
    accuracy was logged; a step logged twice (e.g. after a resume) keeps its last value.
    """
    columns = {}
    for name, points in histories.items():
        if not isinstance(points, list):
            points = list(points)
        if points and hasattr(points[0], "step"):
            points = [(p.step, p.value) for p in sorted(points, key=lambda p: (p.timestamp, p.step))]
        pairs = [(int(step), float(value)) for step, value in points]
        if pairs:
            series = pd.Series([v for _, v in pairs], index=[s for s, _ in pairs], dtype=float)
            columns[name] = series[~series.index.duplicated(keep="last")]
    if TEST_METRIC not in columns:
        return pd.DataFrame()
    table = pd.DataFrame(columns).sort_index()
    return table[table[TEST_METRIC].notna()]
