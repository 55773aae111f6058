"""Model-selection rules: which epoch of a run a reported number comes from.

Every run evaluates the target TEST set at every epoch (`eval/target_test_acc`) but never selects on
it; a rule looks only at its own validation metric, picks an epoch, and reports the target test accuracy
of that epoch. That lets one training run answer "what would source-val / entropy / oracle selection
have given?" without retraining.

A rule never reads target labels unless it is `oracle`: `source_val` reads source labels only,
`target_entropy` reads unlabelled target predictions, `last` reads nothing. `uses_target_labels`
says so, and tables print oracle numbers only in their own, labelled table.

Ties go to the earliest epoch, so a rule is deterministic and never rewards training longer for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd

from .errors import ReportError

#: Target test accuracy, logged once per epoch: the number a rule's chosen epoch reports.
TEST_METRIC = "eval/target_test_acc"
#: Source validation accuracy at the chosen epoch, reported beside it (there is no per-epoch source test).
SOURCE_METRIC = "val/source_acc"


@dataclass(frozen=True)
class Choice:
    """The epoch a rule chose in one run and what it reports there."""

    rule: str
    step: int
    epoch: int
    target_acc: float
    source_acc: float


@dataclass(frozen=True)
class Rule:
    name: str
    #: Validation metric the rule ranks epochs by; None for `last`.
    metric: str | None
    #: "max" or "min" of `metric`; "last" takes the final epoch.
    mode: str
    uses_target_labels: bool
    description: str

    def choose(self, history: pd.DataFrame) -> Choice | None:
        """Pick an epoch from an epoch table (see `epoch_table`); None if the run lacks the rule's metric."""
        if history.empty:
            return None
        if self.mode == "last":
            position = len(history) - 1
        else:
            if self.metric not in history.columns:
                return None
            values = history[self.metric].reset_index(drop=True).dropna()
            if values.empty:
                return None
            best = values.max() if self.mode == "max" else values.min()
            position = int(values.index[values == best][0])  # earliest of equal values
        row = history.iloc[position]
        return Choice(
            rule=self.name,
            step=int(history.index[position]),
            epoch=position,
            target_acc=float(row[TEST_METRIC]),
            source_acc=float(row[SOURCE_METRIC]) if SOURCE_METRIC in history.columns else float("nan"),
        )


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("source_val", "val/source_acc", "max", False, "max source validation accuracy"),
        Rule("oracle", "val/target_acc", "max", True, "max target validation accuracy — ORACLE, uses target labels"),
        Rule("target_entropy", "val/target_entropy", "min", False, "min mean prediction entropy on target val (label-free)"),
        Rule("last", None, "last", False, "last epoch"),
    )
}
DEFAULT_RULE = "source_val"
#: Every metric any rule needs, i.e. the histories to fetch per run.
HISTORY_METRICS = tuple(sorted({TEST_METRIC, SOURCE_METRIC, *(r.metric for r in RULES.values() if r.metric)}))


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
