"""How well each selection rule chooses without target labels, measured on recorded checkpoints.

Every epoch of every run is a checkpoint with its rule metrics and its target test accuracy (logged for
evaluation only). For each task × method and each rule:

- **weighted Spearman**: the correlation between the rule's ranking of the checkpoints and their target
  accuracy ranking, each checkpoint weighted by (its accuracy rank / N)², so the best checkpoints count
  most (the weighting idea of Musgrave, Belongie & Lim 2022; our exponent). Rules that minimise are
  negated first, so +1 is a perfect validator for every rule.
- **checkpoint regret**: per run, the best epoch's target accuracy minus the accuracy of the epoch the
  rule chooses; averaged over runs.
- **hyperparameter regret**: every trial reports the checkpoint the rule chooses in it; the rule then
  picks the trial whose chosen checkpoint scores best; regret = the best of those trials' accuracies minus
  the picked one's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..selection import LEAVE_ONE_OUT, RULES, TEST_METRIC, Rule
from .selection import epoch_table

#: Rules benchmarked: every rule with a metric (`last` has none; `oracle` is shown as the ceiling), except
#: leave-one-domain-out, which scores a group of runs that each held out a source domain, not one DA run.
BENCHMARKED = tuple(name for name, rule in RULES.items() if rule.metric and name != LEAVE_ONE_OUT)


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy()


def weighted_spearman(scores: np.ndarray, accuracies: np.ndarray, power: float = 2.0) -> float:
    """Weighted Pearson correlation of the two rankings; weights (accuracy rank / N) ** power."""
    scores, accuracies = np.asarray(scores, float), np.asarray(accuracies, float)
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(accuracies) == 0:
        return float("nan")
    rs, ra = _ranks(scores), _ranks(accuracies)
    w = (ra / len(ra)) ** power
    w = w / w.sum()
    ms, ma = (w * rs).sum(), (w * ra).sum()
    cov = (w * (rs - ms) * (ra - ma)).sum()
    return float(cov / np.sqrt((w * (rs - ms) ** 2).sum() * (w * (ra - ma) ** 2).sum()))


def checkpoints(source, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, epoch): run_id, arm, epoch, target_acc and every benchmarked rule's metric."""
    metrics = sorted({RULES[n].metric for n in BENCHMARKED} | {TEST_METRIC})
    rows = []
    for _, run in runs.iterrows():
        table = epoch_table({m: source.history(run["run_id"], m) for m in metrics})
        if table.empty or TEST_METRIC not in table:
            continue
        for epoch, (_, values) in enumerate(table.iterrows(), start=1):
            rows.append(
                {
                    "run_id": run["run_id"],
                    "arm": run["tags.compare.arm"],
                    "epoch": epoch,
                    "target_acc": values[TEST_METRIC],
                    **{m: values.get(m, np.nan) for m in metrics if m != TEST_METRIC},
                }
            )
    return pd.DataFrame(rows)


def _oriented(rule: Rule, values: pd.Series) -> np.ndarray:
    return values.to_numpy(float) * (1 if rule.mode == "max" else -1)


def _choice(rule: Rule, run: pd.DataFrame) -> pd.Series | None:
    """The checkpoint `rule` chooses in one run (earliest of equal values), or None without its metric."""
    values = run[rule.metric]
    if values.isna().all():
        return None
    oriented = _oriented(rule, values.fillna(-np.inf if rule.mode == "max" else np.inf))
    return run.iloc[int(np.argmax(oriented))]


def rule_scores(frame: pd.DataFrame, name: str) -> dict[str, float]:
    """Weighted Spearman, checkpoint regret and hyperparameter regret (points) of rule `name` on the
    checkpoints of one task × method."""
    rule = RULES[name]
    usable = frame.dropna(subset=[rule.metric])
    if usable.empty:
        return {"weighted_spearman": np.nan, "checkpoint_regret": np.nan, "hp_regret": np.nan, "checkpoints": 0}
    spearman = weighted_spearman(_oriented(rule, usable[rule.metric]), usable["target_acc"].to_numpy())
    regrets, chosen = [], []
    for _, run in usable.sort_values("epoch").groupby("run_id"):
        pick = _choice(rule, run)
        regrets.append(100 * (run["target_acc"].max() - pick["target_acc"]))
        chosen.append(pick)
    picks = pd.DataFrame(chosen)
    best_trial = picks.iloc[int(np.argmax(_oriented(rule, picks[rule.metric])))]
    return {
        "weighted_spearman": spearman,
        "checkpoint_regret": float(np.mean(regrets)),
        "hp_regret": float(100 * (picks["target_acc"].max() - best_trial["target_acc"])),
        "checkpoints": len(usable),
    }


def benchmark(checkpoint_frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """task → checkpoints (checkpoints()) ⇒ one row per task × method × rule."""
    rows = []
    for task, frame in checkpoint_frames.items():
        for arm, part in frame.groupby("arm"):
            for name in BENCHMARKED:
                rows.append({"task": task, "method": arm, "rule": name, **rule_scores(part, name)})
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Rule × task: means over methods, the rules ordered by their mean weighted Spearman (oracle last)."""
    table = results.groupby(["rule", "task"])[["weighted_spearman", "checkpoint_regret", "hp_regret"]].mean().unstack("task")
    order = table["weighted_spearman"].mean(axis=1).drop("oracle", errors="ignore").sort_values(ascending=False).index.tolist()
    return table.loc[order + [r for r in table.index if r not in order]]
