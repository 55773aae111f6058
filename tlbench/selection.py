"""The vocabulary of evaluation and model selection, in one place: the evaluation splits and their metric
keys, and the rules that choose a run's epoch (`source_val`, `oracle`, `target_entropy`, the label-free
validators, `last`).

Training checkpoints on a rule's metric, the report re-applies rules to recorded histories, searches
optimise a rule's metric: all of them read the names here. Pure Python, so the config layer (imported
on every `tlbench --help`) can use it.

A rule never reads target labels unless it is `oracle`: `source_val` reads source labels only,
`target_entropy` and the validators of tlbench/validators.py (`im`, `bnm`, `snd`, `classami`) read
unlabelled target predictions and features, `dev`/`devn` add source-validation losses, `last` reads
nothing. Ties go to the earliest
epoch, so a rule is deterministic and never rewards training longer for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Evaluation loaders in the order the datamodule returns them, and each one's metric prefix. Every
#: epoch also evaluates the target TEST split (`eval/target_test`), which no rule selects on.
VAL_SPLITS = ("val/source", "val/target", "eval/target_test")
TEST_SPLITS = ("test/source", "test/target")
#: Metrics measured once per run (tracking.analysis) that exports keep and `tlbench report --metric` tabulates.
RUN_METRICS = ("analysis/a_distance",)
#: The rule whose result is a group of runs, not one: DomainBed's leave-one-domain-out selection.
LEAVE_ONE_OUT = "leave_one_out"
#: The held-out source domain of a leave-one-domain-out run (data.holdout), evaluated after VAL_SPLITS.
HOLDOUT_SPLIT = "val/holdout"
#: Target test accuracy, logged once per epoch: the number a rule's chosen epoch reports.
TEST_METRIC = "eval/target_test_acc"
#: Source validation accuracy at the chosen epoch, reported beside it (there is no per-epoch source test).
SOURCE_METRIC = "val/source_acc"


@dataclass(frozen=True)
class Choice:
    """The epoch a rule chose in one run (its number: 1 = the first) and what it reports there."""

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
    #: Reads the source validation split (so a source-free run, which has none, cannot use it).
    reads_source: bool = False

    def choose(self, history: Any) -> Choice | None:
        """Pick an epoch from an epoch table (a pandas frame, see `report.selection.epoch_table`); None
        if the run lacks the rule's metric."""
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
            epoch=position + 1,
            target_acc=float(row[TEST_METRIC]),
            source_acc=float(row[SOURCE_METRIC]) if SOURCE_METRIC in history.columns else float("nan"),
        )


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("source_val", "val/source_acc", "max", False, "max source validation accuracy", reads_source=True),
        Rule("oracle", "val/target_acc", "max", True, "max target validation accuracy — ORACLE, uses target labels"),
        Rule("target_entropy", "val/target_entropy", "min", False, "min mean prediction entropy on target val (label-free)"),
        Rule("im", "val/target_im", "max", False, "max information maximisation on target val: entropy of the mean prediction − mean entropy (label-free)"),
        Rule("bnm", "val/target_bnm", "max", False, "max nuclear norm of the target-val prediction matrix / N (label-free)"),
        Rule("snd", "val/target_snd", "max", False, "max soft neighbourhood density of target-val predictions (label-free)"),
        Rule("dev", "val/dev", "min", False, "min importance-weighted source-val loss, deep embedded validation (label-free)", reads_source=True),
        Rule("devn", "val/devn", "min", False, "min DEV with max-normalised importance weights (label-free)", reads_source=True),
        Rule("classami", "val/target_classami", "max", False, "max AMI between target-val predictions and k-means clusters of target features (label-free)"),
        Rule(
            LEAVE_ONE_OUT,
            "val/holdout_acc",
            "max",
            False,
            "max accuracy on a held-out source domain, averaged over the runs that each hold out one (leave-one-domain-out)",
            reads_source=True,
        ),
        Rule("last", None, "last", False, "last epoch"),
    )
}
DEFAULT_RULE = "source_val"
#: Rules a run can checkpoint on (`selection=` in a config): all of them (`last` keeps the final epoch,
#: the protocol of source-free methods, which have no source validation split).
CHECKPOINT_RULES = tuple(RULES)
#: Rule → (monitored metric, mode), for ModelCheckpoint and searches; `last` monitors nothing (None).
SELECTION_METRICS = {name: (RULES[name].metric, RULES[name].mode) for name in CHECKPOINT_RULES}
#: Every metric any rule needs, i.e. the histories to fetch per run.
HISTORY_METRICS = tuple(sorted({TEST_METRIC, SOURCE_METRIC, *(r.metric for r in RULES.values() if r.metric)}))
