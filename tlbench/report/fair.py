"""Tables of a fair comparison (`tlbench compare`), from a store or a committed export.

Every arm's chosen configuration was re-run on the evaluation seeds; the main table shows per arm the
mean target test accuracy with a 95 % t-interval, the gain over the baseline paired on seed with its own
interval, the raw paired t-test p-value and the Holm-adjusted one (the family: every arm against the
baseline in this table), and a verdict that follows the adjusted p. The two best arms are also tested
against each other. The upper bound (trained on target labels) is shown apart and never tested as a
method. Files: table.md/.csv, per_seed.csv, oracle.md/.csv, tuning.csv/.md, sensitivity.md/.csv,
curves.png/.csv, cost.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..collapse import COLLAPSE_SHARE, COLLAPSED_COLUMN, COLLAPSED_TAG
from ..selection import HISTORY_METRICS, RULES
from .collection import collect_runs
from .compare import ALPHA, format_p, holm, paired_test, t_interval
from .curves import curve_frame, plateau_markdown, plot_curves
from .selection import epoch_table

ARM, STAGE = "tags.compare.arm", "tags.compare.stage"
LEVEL = 0.95


def arm_rules(layout: dict[str, Any]) -> dict[str, str]:
    """Arms chosen by their own label-free rule (source-free arms cannot read source validation)."""
    return dict(layout.get("arm_rules") or {})


def rule_of(layout: dict[str, Any], arm: str) -> str:
    return arm_rules(layout).get(arm, layout["rule"])


def _chosen_rows(frame: pd.DataFrame, layout: dict[str, Any], rule: str) -> pd.DataFrame:
    """Rows of `frame` chosen by `rule`; for the comparison's rule, each arm's rows under its own rule."""
    if rule != layout["rule"]:
        return frame[frame["rule"] == rule]
    return frame[frame["rule"] == frame[ARM].map(arm_rules(layout)).fillna(rule)]


def _runs(frame: pd.DataFrame, layout: dict[str, Any], rule: str, stage: str) -> pd.DataFrame:
    chosen = _chosen_rows(frame, layout, rule)
    chosen = chosen[(chosen[STAGE] == stage) & chosen["target_acc"].notna()]
    return chosen.assign(acc=chosen["target_acc"] * 100.0, seed=chosen["seed"].astype(int))


def _by_seed(runs: pd.DataFrame, arm: str) -> pd.Series:
    part = runs[runs[ARM] == arm]
    return pd.Series(part["acc"].to_numpy(), index=part["seed"].astype(str).to_numpy())


def arm_table(frame: pd.DataFrame, layout: dict[str, Any], rule: str) -> pd.DataFrame:
    """One row per arm (evaluation runs under `rule`), then the upper bound: mean, CI, per-seed gain
    over the baseline with CI, raw and Holm-adjusted p, verdict."""
    runs = _runs(frame, layout, rule, "eval")
    baseline = layout["baseline"]
    arms = [a for a in layout["arms"] if a in set(runs[ARM])]
    base = _by_seed(runs, baseline)
    rows = []
    for arm in arms:
        ours = _by_seed(runs, arm)
        row = {"arm": arm, "role": "baseline" if arm == baseline else "method", "n": len(ours), "mean": ours.mean(), "ci95": t_interval(ours.to_numpy(), LEVEL)}
        if arm != baseline:
            seeds = ours.index.intersection(base.index)
            result = paired_test(ours, base, what=arm)
            row.update(gain=result["gain"], gain_ci95=t_interval((ours[seeds] - base[seeds]).to_numpy(), LEVEL), p=result["p_value"], n_pairs=result["n_pairs"])
        rows.append(row)
    table = pd.DataFrame(rows, columns=["arm", "role", "n", "mean", "ci95", "gain", "gain_ci95", "p", "n_pairs"])
    table["p_holm"] = holm(table["p"].astype(float).tolist())
    table["verdict"] = [_verdict(r) for _, r in table.iterrows()]
    bound = layout.get("upper_bound")
    if bound:
        upper = _runs(frame, layout, rule, "upper_bound")
        values = upper.loc[upper[ARM] == bound, "acc"].to_numpy()
        if len(values):
            table.loc[len(table)] = {
                "arm": bound,
                "role": "upper bound (target labels)",
                "n": len(values),
                "mean": values.mean(),
                "ci95": t_interval(values, LEVEL),
                "verdict": "not a method",
            }
    return table


def _verdict(row: pd.Series) -> str:
    if row["role"] == "baseline":
        return "baseline"
    if pd.isna(row["p_holm"]):
        return f"no test (n={int(row['n_pairs'])})"
    word = ("better" if row["gain"] > 0 else "worse") if row["p_holm"] < ALPHA else "within noise"
    return f"{word} (Holm {format_p(row['p_holm'])})"


def best_two(frame: pd.DataFrame, layout: dict[str, Any], table: pd.DataFrame, rule: str) -> str:
    """The two highest means among the arms (baseline included), tested against each other on seed."""
    ranked = table[table["role"] != "upper bound (target labels)"].sort_values("mean", ascending=False)
    if len(ranked) < 2:
        return ""
    first, second = ranked["arm"].iloc[0], ranked["arm"].iloc[1]
    runs = _runs(frame, layout, rule, "eval")
    ours, other = _by_seed(runs, first), _by_seed(runs, second)
    seeds = ours.index.intersection(other.index)
    result = paired_test(ours, other, what=first)
    ci = t_interval((ours[seeds] - other[seeds]).to_numpy(), LEVEL)
    p = "no test" if math.isnan(result["p_value"]) else format_p(result["p_value"])
    word = "ahead" if result["p_value"] < ALPHA else "not distinguishable"
    return (
        f"Best two arms: **{first}** vs **{second}**: {result['gain']:+.2f} ± {ci:.2f} points (paired on {result['n_pairs']} seeds, "
        f"two-sided paired t-test {p}, a single planned comparison outside the Holm family): {first} is {word}."
    )


def _markdown_table(table: pd.DataFrame, baseline: str) -> str:
    lines = [f"| arm | role | target acc (%) | n | Δ vs {baseline} (points) | p | p (Holm) | verdict |", "|:--|:--|--:|--:|--:|--:|--:|:--|"]
    for _, r in table.iterrows():
        acc = f"{r['mean']:.2f}" + ("" if pd.isna(r["ci95"]) else f" ± {r['ci95']:.2f}")
        gain = "–" if pd.isna(r["gain"]) else f"{r['gain']:+.2f}" + ("" if pd.isna(r["gain_ci95"]) else f" ± {r['gain_ci95']:.2f}")
        p = "–" if pd.isna(r["p"]) else format_p(r["p"])
        p_holm = "–" if pd.isna(r["p_holm"]) else format_p(r["p_holm"])
        lines.append(f"| {r['arm']} | {r['role']} | {acc} | {int(r['n'])} | {gain} | {p} | {p_holm} | {r['verdict']} |")
    return "\n".join(lines)


def _caption(layout: dict[str, Any], rule: str) -> str:
    rule_obj = RULES[rule]
    oracle = (
        "ORACLE checkpoint selection — uses target labels; an upper bound on selection, not comparable to label-free results. "
        if rule_obj.uses_target_labels
        else ""
    )
    seeds = layout["eval_seeds"]
    own = "".join(
        f" Arm {arm} is source-free (no source validation split): its trials and epochs are chosen by rule '{arm_rule}' instead."
        for arm, arm_rule in arm_rules(layout).items()
        if rule == layout["rule"]
    )
    return (
        f"{oracle}Target test accuracy (%) of each arm's configuration chosen from {layout['n_trials']} Optuna trials per arm "
        f"(seed {layout['tuning_seed']}, chosen by rule '{layout['rule']}'), re-run on seeds {', '.join(map(str, seeds))}; "
        f"the epoch of each run chosen by rule '{rule}' ({rule_obj.description}). Mean ± 95 % t-interval over seeds. "
        f"Δ: per-seed difference from {layout['baseline']}, mean ± 95 % t-interval; p: two-sided paired t-test; "
        f"p (Holm): adjusted within this table (every arm against {layout['baseline']}); verdict at α = {ALPHA:g} on the adjusted p.{own}"
    )


def collapsed_line(frame: pd.DataFrame, layout: dict[str, Any]) -> str:
    """Which arms' evaluation runs collapsed (their own selected network predicts one class, collapse.py),
    when the runs carry the tag: a collapsed seed is the configuration failing, not the method being weak."""
    if COLLAPSED_COLUMN not in frame.columns:
        return ""
    runs = _runs(frame, layout, layout["rule"], "eval")
    counts = [(arm, int((part[COLLAPSED_COLUMN] == "true").sum()), len(part)) for arm, part in runs.groupby(ARM, sort=False)]
    parts = [f"{arm} {n} of {total} seeds" for arm, n, total in counts if n]
    if not parts:
        return ""
    share = f"{100 * COLLAPSE_SHARE:.0f} %"
    return f"Collapsed runs (the selected network predicts one class for ≥ {share} of a test split; tag `{COLLAPSED_TAG}`): {', '.join(parts)}."


def write_arm_tables(frame: pd.DataFrame, layout: dict[str, Any], rule: str, out: Path, stem: str) -> list[Path]:
    table = arm_table(frame, layout, rule)
    text = [f"**Rule `{rule}`.** {_caption(layout, rule)}", "", _markdown_table(table, layout["baseline"]), ""]
    for line in (best_two(frame, layout, table, rule), collapsed_line(frame, layout) if rule == layout["rule"] else ""):
        if line:
            text += [line, ""]
    (out / f"{stem}.md").write_text("\n".join(text))
    numbers = table.assign(rule=rule).round({"mean": 4, "ci95": 4, "gain": 4, "gain_ci95": 4, "p": 6, "p_holm": 6})
    numbers.astype({"n": "Int64", "n_pairs": "Int64"}).to_csv(out / f"{stem}.csv", index=False, lineterminator="\n")
    return [out / f"{stem}.md", out / f"{stem}.csv"]


def write_per_seed(frame: pd.DataFrame, layout: dict[str, Any], out: Path) -> Path:
    rows = pd.concat([_chosen_rows(frame, layout, layout["rule"]), _chosen_rows(frame, layout, "oracle")])
    rows = rows[rows[STAGE].isin(["eval", "upper_bound"])]
    per_seed = rows.assign(target_acc=(rows["target_acc"] * 100).round(4), source_val_acc=(rows["source_acc"] * 100).round(4))
    per_seed = per_seed[[ARM, STAGE, "seed", "rule", "target_acc", "source_val_acc", "selected_epoch", "run_id"]]
    per_seed = per_seed.rename(columns={ARM: "arm", STAGE: "stage"}).astype({"seed": int}).sort_values(["stage", "arm", "rule", "seed"])
    per_seed.to_csv(out / "per_seed.csv", index=False, lineterminator="\n")
    return out / "per_seed.csv"


def _rule_value(source, run_id: str, rule: str) -> tuple[float, float]:
    """(the rule's best metric value over the run's epochs, target test accuracy at that epoch)."""
    history = epoch_table({m: source.history(run_id, m) for m in HISTORY_METRICS})
    choice = RULES[rule].choose(history)
    if choice is None:
        return math.nan, math.nan
    return float(history.loc[choice.step, RULES[rule].metric]), choice.target_acc


def _short(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _params(run: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={_short(run[f'params.{k}'])}" for k in keys)


def tuning_record(source, layout: dict[str, Any]) -> pd.DataFrame:
    """Per arm: trials run, complete, pruned, failed; the trial the rule chose with its values, the rule's
    value and its target accuracy on the tuning seed; the trial an oracle (target validation labels) would
    have chosen, for contrast; wall seconds of tuning and of evaluation."""
    runs = source.runs()
    runs = runs[runs.get(STAGE).notna()] if STAGE in runs.columns else runs.iloc[0:0]
    seconds = (runs["end_time"] - runs["start_time"]) / 1000.0
    rows = []
    for arm, keys in layout["arms"].items():
        trials = runs[(runs[ARM] == arm) & (runs[STAGE] == "tune")]
        if trials.empty:
            continue
        pruned = trials.get("tags.pruned", pd.Series(index=trials.index, dtype=object)).eq("true")
        complete = trials[(trials["status"] == "FINISHED") & ~pruned]
        scored = []
        for _, trial in complete.iterrows():
            value, acc = _rule_value(source, trial["run_id"], rule_of(layout, arm))
            oracle_value, oracle_acc = _rule_value(source, trial["run_id"], "oracle")
            scored.append((trial, value, acc, oracle_value, oracle_acc))
        sign = 1 if RULES[rule_of(layout, arm)].mode == "max" else -1
        order = lambda item: int(item[0].get("tags.optuna.trial", 0))  # noqa: E731  ties: earliest trial
        chosen = max(scored, key=lambda s: (sign * s[1], -order(s))) if scored else None
        oracle = max(scored, key=lambda s: (s[3], -order(s))) if scored else None
        evals = runs[(runs[ARM] == arm) & (runs[STAGE] == "eval")]
        rows.append(
            {
                "arm": arm,
                "trials": len(trials),
                "complete": len(complete),
                "pruned": int(pruned.sum()),
                "failed": int((trials["status"] == "FAILED").sum()),
                "chosen_trial": order(chosen) if chosen else None,
                "chosen_params": _params(chosen[0], keys) if chosen else "",
                "rule": rule_of(layout, arm),
                "rule_value": round(chosen[1], 6) if chosen else math.nan,
                "chosen_tuning_target_acc": round(100 * chosen[2], 4) if chosen else math.nan,
                "oracle_trial": order(oracle) if oracle else None,
                "oracle_params": _params(oracle[0], keys) if oracle else "",
                "oracle_tuning_target_acc": round(100 * oracle[4], 4) if oracle else math.nan,
                "tuning_seconds": round(float(seconds[trials.index].sum()), 1),
                "eval_seconds": round(float(seconds[evals.index].sum()), 1),
            }
        )
    return pd.DataFrame(rows)


def write_tuning(source, layout: dict[str, Any], out: Path) -> list[Path]:
    record = tuning_record(source, layout)
    record.astype({"chosen_trial": "Int64", "oracle_trial": "Int64"}).to_csv(out / "tuning.csv", index=False, lineterminator="\n")
    lines = [
        f"Tuning record: {layout['n_trials']} trials per arm on seed {layout['tuning_seed']}, sampler {layout['sampler']}, "
        f"chosen by each arm's rule (label-free, fixed before any run: '{layout['rule']}' unless the row says otherwise). The oracle columns show which trial "
        "target validation labels would have chosen, and its target accuracy on the tuning seed: the cost of "
        "choosing without labels. Target accuracies in %.",
        "",
        "| arm | trials | complete | pruned | failed | chosen by | chosen trial | its target acc | oracle choice | its target acc | tuning s | eval s |",
        "|:--|--:|--:|--:|--:|:--|:--|--:|:--|--:|--:|--:|",
    ]
    for _, r in record.iterrows():
        lines.append(
            f"| {r['arm']} | {r['trials']} | {r['complete']} | {r['pruned']} | {r['failed']} | {r['rule']} | trial {r['chosen_trial']}: "
            f"{r['chosen_params']} | {r['chosen_tuning_target_acc']:.2f} | trial {r['oracle_trial']}: {r['oracle_params']} | "
            f"{r['oracle_tuning_target_acc']:.2f} | {r['tuning_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
    return [out / "tuning.csv", out / "tuning.md"]


def write_sensitivity(frame: pd.DataFrame, layout: dict[str, Any], out: Path) -> list[Path]:
    spec = layout.get("sensitivity")
    if not spec:
        return []
    runs = _runs(frame, layout, layout["rule"], "sensitivity")
    if runs.empty:
        return []
    key = spec["key"]
    runs = runs.assign(value=runs[key].astype(float))
    stats = runs.groupby([ARM, "value"])["acc"].agg(list).reset_index()
    stats["mean"] = stats["acc"].map(np.mean)
    stats["ci95"] = stats["acc"].map(lambda v: t_interval(np.asarray(v), LEVEL))
    stats["n"] = stats["acc"].map(len)
    tuned = {arm: float(v) for arm, v in _runs(frame, layout, layout["rule"], "eval").groupby(ARM)[key].first().items() if pd.notna(v)}
    values = sorted(stats["value"].unique())
    lines = [
        f"Trade-off sensitivity: `{key}` varied, every other value at the arm's tuned choice; target test accuracy (%) "
        f"by rule '{layout['rule']}', mean ± 95 % t-interval over seeds {', '.join(map(str, spec['seeds']))}.",
        "",
        "| arm | tuned " + key + " | " + " | ".join(f"{v:g}" for v in values) + " |",
        "|:--|--:|" + "--:|" * len(values),
    ]
    for arm, part in stats.groupby(ARM):
        cells = {row["value"]: f"{row['mean']:.2f} ± {row['ci95']:.2f}" for _, row in part.iterrows()}
        lines.append(f"| {arm} | {tuned.get(arm, float('nan')):.3g} | " + " | ".join(cells.get(v, "–") for v in values) + " |")
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")
    stats.drop(columns="acc").rename(columns={ARM: "arm", "value": key}).round({"mean": 4, "ci95": 4}).to_csv(
        out / "sensitivity.csv", index=False, lineterminator="\n"
    )
    return [out / "sensitivity.md", out / "sensitivity.csv"]


def write_curves_and_cost(source, frame: pd.DataFrame, layout: dict[str, Any], out: Path) -> list[Path]:
    """Learning curves of the evaluation runs (and the upper bound) per arm; cost.md: the plateau check
    and the wall time of every stage, tuning included, so the budget of a rerun is known."""
    shown = _chosen_rows(frame, layout, layout["rule"])
    shown = shown[shown[STAGE].isin(["eval", "upper_bound"])]
    curves, runs = curve_frame(source, ARM, shown)
    paths = []
    if not curves.empty:
        curves.groupby(["label", "metric", "step"])["value"].agg(["mean", "std", "count"]).reset_index().round(5).to_csv(
            out / "curves.csv", index=False, lineterminator="\n"
        )
        paths += [plot_curves(curves, out / "curves.png"), out / "curves.csv"]
    everything = source.runs()
    everything = everything[everything[STAGE].notna()] if STAGE in everything.columns else everything.iloc[0:0]
    everything = everything.assign(seconds=(everything["end_time"] - everything["start_time"]) / 1000.0)
    lines = [
        "## Convergence of the evaluation runs (seed means)",
        "",
        plateau_markdown(curves) if not curves.empty else "(none)",
        "## Cost of every stage",
        "",
        "| arm | stage | runs | mean s/run | total s |",
        "|:--|:--|--:|--:|--:|",
    ]
    for (arm, stage), part in everything.groupby([ARM, STAGE], sort=True):
        lines.append(f"| {arm} | {stage} | {len(part)} | {part['seconds'].mean():.0f} | {part['seconds'].sum():.0f} |")
    total = everything["seconds"].sum()
    lines += [
        "",
        f"Total: {len(everything)} runs, {total:.0f} s of run wall time = {total / 3600:.2f} CPU-hours at one intra-op "
        f"thread per run (two worker processes ran side by side). Budget: {layout['n_trials']} tuning trials per arm, "
        f"{len(layout['eval_seeds'])} evaluation seeds.",
    ]
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    return paths + [out / "cost.md"]


def write_comparison(source, layout: dict[str, Any], out: Path) -> list[Path]:
    """Every file of a comparison's results folder from `source` (store or export)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = collect_runs(source, rules=(layout["rule"], "oracle", *sorted(set(arm_rules(layout).values()))))
    written = write_arm_tables(frame, layout, layout["rule"], out, "table")
    written += write_arm_tables(frame, layout, "oracle", out, "oracle")
    written.append(write_per_seed(frame, layout, out))
    written += write_tuning(source, layout, out)
    written += write_sensitivity(frame, layout, out)
    written += write_curves_and_cost(source, frame, layout, out)
    return written


def layout_of(spec) -> dict[str, Any]:
    """What an export must carry to rebuild a comparison's tables: the protocol as declared."""
    return {
        "kind": "comparison",
        "name": spec.name,
        "title": spec.title,
        "rule": spec.rule,
        "baseline": spec.baseline,
        "n_trials": spec.n_trials,
        "tuning_seed": spec.tuning_seed,
        "sampler": json.loads(json.dumps(spec.sampler)),
        "eval_seeds": spec.eval_seeds,
        "arms": {name: list(arm.params) for name, arm in spec.arms.items()},
        "upper_bound": spec.upper_bound.name if spec.upper_bound else None,
        "sensitivity": {"key": spec.sensitivity.key, "seeds": spec.sensitivity.seeds} if spec.sensitivity else None,
        **({"arm_rules": own} if (own := {n: a.rule for n, a in spec.arms.items() if a.rule}) else {}),
    }


def task_summary(out: Path, tasks: list[str], stem: str) -> pd.DataFrame:
    """Rows arms, columns tasks then Avg (the mean over tasks, only for an arm with every task): each task's
    `<task>/<stem>.csv` side by side, DomainBed's table format."""
    cells, verdicts = {}, {}
    for task in tasks:
        path = out / task / f"{stem}.csv"
        if not path.exists():
            continue
        table = pd.read_csv(path)
        for _, row in table[table["role"] != "upper bound (target labels)"].iterrows():
            cells.setdefault(row["arm"], {})[task] = (row["mean"], row["ci95"])
            verdicts.setdefault(row["arm"], {})[task] = row["verdict"]
    rows = []
    for arm, by_task in cells.items():
        row = {"arm": arm}
        for task in tasks:
            mean, ci = by_task.get(task, (math.nan, math.nan))
            row[f"{task}_mean"], row[f"{task}_ci95"], row[f"{task}_verdict"] = mean, ci, verdicts[arm].get(task, "")
        row["avg"] = float(np.mean([by_task[t][0] for t in tasks])) if all(t in by_task for t in tasks) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def write_task_summary(out: Path, tasks: list[str], layout: dict[str, Any], title: str, into: Path | None = None) -> list[Path]:
    """summary.md/.csv of a comparison with tasks, from each task's committed tables in `out` (so it rebuilds
    with them), written to `into` (default: `out`)."""
    into = into or out
    parts = [f"# {title}", ""]
    frames = []
    for stem, rule in (("table", layout["rule"]), ("oracle", "oracle")):
        summary = task_summary(out, tasks, stem)
        if summary.empty:
            continue
        frames.append(summary.assign(rule=rule))
        oracle = "ORACLE checkpoint selection (target labels), an upper bound on selection, not comparable. " if rule == "oracle" else ""
        parts += [
            f"**Rule `{rule}`.** {oracle}Target test accuracy (%) per task (mean ± 95 % t-interval over evaluation seeds) of "
            f"each arm's configuration tuned for that task ({layout['n_trials']} trials per arm and task, chosen by rule "
            f"'{layout['rule']}'); Avg: mean over tasks. ▲/▼: better/worse than {layout['baseline']} in that task's paired "
            "test after Holm's correction over the arms (see each task's table.md).",
            "",
            "| arm | " + " | ".join(tasks) + " | Avg |",
            "|:--|" + "--:|" * (len(tasks) + 1),
        ]
        for _, row in summary.iterrows():
            marks = {t: ("▲" if str(row[f"{t}_verdict"]).startswith("better") else "▼" if str(row[f"{t}_verdict"]).startswith("worse") else "") for t in tasks}
            shown = ["–" if pd.isna(row[f"{t}_mean"]) else f"{row[f'{t}_mean']:.2f} ± {row[f'{t}_ci95']:.2f}{marks[t]}" for t in tasks]
            parts.append(f"| {row['arm']} | " + " | ".join(shown) + f" | {'–' if pd.isna(row['avg']) else format(row['avg'], '.2f')} |")
        parts.append("")
    (into / "summary.md").write_text("\n".join(parts))
    pd.concat(frames).round(4).to_csv(into / "summary.csv", index=False, lineterminator="\n")
    return [into / "summary.md", into / "summary.csv"]
