"""The paired comparison the study's main table leaves out: full fine-tuning minus the frozen encoder with a
linear head, per label budget (the main table pairs every arm with scratch only). Reads the committed
export, so it needs no MLflow store and no training:

    .venv/bin/python experiments/text_transfer/full_vs_probe.py   # → results/text_transfer/full_vs_probe.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from tlbench.report.collection import collect_runs
from tlbench.report.compare import holm
from tlbench.report.sources import ExportSource
from tlbench.report.tables import rule_runs

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "results" / "text_transfer" / "runs.csv"
OUT = ROOT / "results" / "text_transfer" / "full_vs_probe.md"
RULE = "source_val"


def main() -> None:
    runs = rule_runs(collect_runs(ExportSource(RUNS), rules=(RULE,)), RULE)
    budget = runs["data.labels_per_class"].astype(str)
    rows = []
    for value in sorted(budget.unique(), key=lambda v: (v == "None", float(v) if v != "None" else 0.0)):
        arm = runs[budget == value].pivot_table(index="seed", columns="freeze.name", values="acc")
        pairs = arm[["full", "linear_probe"]].dropna()
        diff = (pairs["full"] - pairs["linear_probe"]).to_numpy()
        p = float(stats.ttest_rel(pairs["full"], pairs["linear_probe"]).pvalue) if len(diff) > 1 else float("nan")
        rows.append((value, float(np.mean(diff)), float(np.std(diff, ddof=1)), p, len(diff)))
    adjusted = holm([r[3] for r in rows])
    lines = [
        f"**Full fine-tuning − frozen encoder + linear head, rule `{RULE}`.** Target test accuracy points, mean over seeds of "
        "full − linear_probe, each run against the linear_probe run of the same seed and label budget; ± std of these differences; "
        "paired t-test across seeds, two-sided, Holm-adjusted over the budgets below, significance level 0.05.",
        "",
        "| labels per class | full − linear_probe | p | Holm p | n | verdict |",
        "|:--|--:|--:|--:|--:|:--|",
    ]
    for (value, mean, std, p, n), p_holm in zip(rows, adjusted):
        verdict = "within noise" if not p_holm < 0.05 else ("full better" if mean > 0 else "probe better")
        lines.append(f"| {'all' if value == 'None' else value} | {mean:+.2f} ± {std:.2f} | {p:.3g} | {p_holm:.3g} | {n} | {verdict} |")
    lines += ["", f"Made by `.venv/bin/python experiments/text_transfer/full_vs_probe.py` from `{RUNS.relative_to(ROOT)}`.", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
