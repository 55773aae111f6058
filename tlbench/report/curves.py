"""Learning curves and run costs of a reproduction: the evidence that its runs trained to convergence.

Per configuration (rows of the paper table, averaged over seeds) and per epoch: source validation
accuracy (what selects checkpoints), target test accuracy (shown, never used to select), the domain
discriminator's accuracy and the λ it trained with, and the source loss. Written as curves.png and
curves.csv; cost.md holds the plateau check (how much source validation accuracy still moved over the
last quarter of training), per-run wall seconds and the total CPU time.

    python -m tlbench.report.curves --uri sqlite:///results/x/mlflow.db --experiment x --rows adapt.name --out results/x
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from .collection import collect_runs
from .plots import _pyplot
from .sources import CURVES, StoreSource
from .tables import parse_keys


def curve_frame(source, rows: str, runs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves: one row per run × metric × step, runs: one row per FINISHED run with its label and
    seconds). `source` is a store or an export (`sources`); `runs` narrows to a `collect_runs` frame."""
    frame = collect_runs(source, rules=("source_val",)) if runs is None else runs
    if frame.empty:
        return pd.DataFrame(columns=["label", "run_id", "metric", "step", "value"]), frame
    keys = parse_keys(rows)
    frame = frame.assign(label=frame[keys].astype(str).agg(" / ".join, axis=1))
    recorded = source.runs().set_index("run_id")
    wall = (recorded["end_time"] - recorded["start_time"]) / 1000.0
    records = []
    for _, run in frame.iterrows():
        for metric, _ in CURVES:
            for step, value in source.history(run["run_id"], metric):
                records.append({"label": run["label"], "run_id": run["run_id"], "metric": metric, "step": step, "value": value})
    return pd.DataFrame(records), frame.assign(seconds=frame["run_id"].map(wall).astype(float))


def plot_curves(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per metric, one line per configuration: mean over seeds, band = ± std."""
    plt = _pyplot()
    present = [(m, title) for m, title in CURVES if m in set(curves["metric"])]
    columns = min(3, len(present))
    rows = -(-len(present) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    # one colour per configuration in every panel (a panel may lack some, e.g. no discriminator)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {label: palette[i % len(palette)] for i, label in enumerate(sorted(curves["label"].unique()))}
    for ax, (metric, title) in zip(axes.flat, present):
        stats = curves[curves["metric"] == metric].groupby(["label", "step"])["value"].agg(["mean", "std"]).reset_index()
        for label, line in stats.groupby("label"):
            ax.plot(line["step"], line["mean"], label=label, lw=1.4, color=colour[label])
            ax.fill_between(line["step"], line["mean"] - line["std"].fillna(0), line["mean"] + line["std"].fillna(0), alpha=0.15, color=colour[label])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, label=label) for label, c in colour.items()]
    axes.flat[0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plateau_markdown(curves: pd.DataFrame, metric: str = "val/source_acc", labels=None, percent: bool = True, best=max) -> str:
    """Did training converge? Per configuration (all, or `labels`): the seed-mean of `metric` at the last
    evaluation, its change over the last quarter of the steps, and the best value seen; a small change
    says more steps would not have moved the selection metric."""
    stats = curves[curves["metric"] == metric].groupby(["label", "step"])["value"].mean().reset_index()
    if labels is not None:
        stats = stats[stats["label"].isin(labels)]
    scale, unit = (100, "points") if percent else (1, "nats")
    lines = [f"| configuration | steps | {metric} at the end | change over the last quarter ({unit}) | best |", "|:--|--:|--:|--:|--:|"]
    for label, line in stats.groupby("label"):
        line = line.sort_values("step")
        last = line.iloc[-1]
        quarter = line[line["step"] <= 0.75 * last["step"]]
        before = quarter.iloc[-1]["value"] if not quarter.empty else float("nan")
        lines.append(
            f"| {label} | {int(last['step']) + 1} | {scale * last['value']:.2f} | {scale * (last['value'] - before):+.2f} | {scale * best(line['value']):.2f} |"
        )
    return "\n".join(lines) + "\n"


def cost_markdown(runs: pd.DataFrame) -> str:
    """Per-configuration wall seconds per run and the total, so a reader knows what a rerun costs."""
    per = runs.groupby("label")["seconds"].agg(["count", "mean", "min", "max"])
    lines = ["| configuration | runs | mean s/run | min | max |", "|:--|--:|--:|--:|--:|"]
    lines += [f"| {label} | {int(r['count'])} | {r['mean']:.0f} | {r['min']:.0f} | {r['max']:.0f} |" for label, r in per.iterrows()]
    total = runs["seconds"].sum()
    lines += [
        "",
        f"Total: {len(runs)} runs, {total:.0f} s of run wall time = {total / 3600:.2f} h "
        "(core-hours = this × the intra-op threads each run used; the benchmarks here ran with one).",
    ]
    return "\n".join(lines) + "\n"


def write_curves(source, rows: str, out: Path, runs: pd.DataFrame | None = None) -> list[Path]:
    curves, runs = curve_frame(source, rows, runs)
    out.mkdir(parents=True, exist_ok=True)
    if curves.empty:
        return []
    csv = out / "curves.csv"
    (curves.groupby(["label", "metric", "step"])["value"].agg(["mean", "std", "count"]).reset_index().round(5).to_csv(csv, index=False))
    cost = out / "cost.md"
    text = "## Convergence (seed means)\n\n" + plateau_markdown(curves)
    with_source = set(curves.loc[curves["metric"] == "val/source_acc", "label"])
    source_free = sorted(set(curves["label"]) - with_source)
    if source_free:  # no source validation split: the label-free target entropy shows whether they settled
        text += (
            "\nWithout a source validation split (source-free methods): mean target prediction entropy, "
            "lower = more confident; best = lowest.\n\n" + plateau_markdown(curves, "val/target_entropy", source_free, percent=False, best=min)
        )
    cost.write_text(text + "\n## Cost\n\n" + cost_markdown(runs))
    return [plot_curves(curves, out / "curves.png"), csv, cost]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="")
    parser.add_argument("--experiment", default="tlbench")
    parser.add_argument("--rows", default="adapt.name", help="config key(s) naming a curve, comma-separated")
    parser.add_argument("--filter", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    for path in write_curves(StoreSource(args.uri, args.experiment, args.filter), args.rows, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
