"""Validator benchmark → results/validators/: how well each label-free selection rule (source_val,
target_entropy, IM, BNM, SND, DEV, DEVN, ClassAMI; oracle as the ceiling) ranks recorded checkpoints
by target accuracy and what choosing with it costs.

    .venv/bin/python experiments/validators/benchmark.py --train     # record the digits checkpoints (~45 min on 2 cores), export, tables
    .venv/bin/python experiments/validators/benchmark.py             # tables again from the committed exports only

Checkpoints: every epoch of every tuning trial in each task's export (results/validators/<task>/runs.csv,
written by --train from `tlbench compare validators_digits --stages tune`), plus the tuning trials of the
fair comparisons whose runs recorded the validators (results/fair_da_*/runs.csv). Definitions in
tlbench/report/validator_benchmark.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "validators"
FAIR_EXPORTS = ("fair_da_digits", "fair_da_fashion")


def train_digits(workers: int) -> None:
    from tlbench.report.sources import StoreSource, export_runs

    out = OUT / "digits"
    subprocess.run(
        [str(Path(sys.executable).with_name("tlbench")), "compare", "validators_digits", "--stages", "tune", "--workers", str(workers), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    export_runs(
        StoreSource(f"sqlite:///{out / 'mlflow.db'}", "validators_digits"),
        out / "runs.csv",
        {"kind": "validator_checkpoints", "comparison": "validators_digits"},
    )


def task_exports() -> dict[str, Path]:
    exports = {p.parent.name: p for p in sorted(OUT.glob("*/runs.csv"))}
    for name in FAIR_EXPORTS:
        path = ROOT / "results" / name / "runs.csv"
        if path.exists():
            exports[name] = path
    return exports


def load_checkpoints(exports: dict[str, Path]) -> dict[str, pd.DataFrame]:
    from tlbench.report.sources import ExportSource
    from tlbench.report.validator_benchmark import checkpoints

    frames = {}
    for task, path in exports.items():
        source = ExportSource(path)
        runs = source.runs()
        runs = runs[(runs["status"] == "FINISHED") & (runs.get("tags.compare.stage") == "tune")].copy()
        # the same number of trials per method: the first ones by Optuna trial number
        runs["trial"] = pd.to_numeric(runs["tags.optuna.trial"])
        per_arm = runs.groupby("tags.compare.arm").size().min()
        runs = runs.sort_values("trial").groupby("tags.compare.arm").head(per_arm)
        frame = checkpoints(source, runs)
        if not frame.empty and frame["val/target_im"].notna().any():  # studies recorded before the validators existed have none
            frames[task] = frame[frame["val/target_im"].notna()]
    return frames


def cost_table(shapes: dict[str, tuple[int, int, int]], repeats: int = 5) -> pd.DataFrame:
    """Median seconds of each validator on random inputs of a task's validation shapes (examples, feature
    dimensions, classes), one thread."""
    import torch

    from tlbench import validators as V

    torch.set_num_threads(1)
    rows = []
    for task, (n, d, c) in shapes.items():
        generator = torch.Generator().manual_seed(0)
        probs = torch.softmax(3 * torch.randn(n, c, generator=generator), 1)
        feats, source, _losses = (torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator), torch.rand(n, generator=generator))
        parts = {
            "im": lambda: V.information_maximization(probs),
            "bnm": lambda: V.batch_nuclear_norm(probs),
            "snd": lambda: V.soft_neighbourhood_density(probs),
            "classami": lambda: V.class_ami(probs, feats),
            "dev + devn": lambda: V.importance_weights(source, feats),
        }
        for name, call in parts.items():
            call()  # warm-up: imports and first-call allocation
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            rows.append({"task": task, "validator": name, "examples": n, "dims": d, "classes": c, "ms": 1000 * float(np.median(times))})
    return pd.DataFrame(rows)


def scatter(frames: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlbench.report.validator_benchmark import BENCHMARKED
    from tlbench.selection import RULES

    columns = 5
    per_task = -(-len(BENCHMARKED) // columns)
    fig, axes = plt.subplots(per_task * len(frames), columns, figsize=(3.0 * columns, 2.7 * per_task * len(frames)), squeeze=False)
    for block, (task, frame) in enumerate(frames.items()):
        for index in range(per_task * columns):
            ax = axes[block * per_task + index // columns][index % columns]
            if index >= len(BENCHMARKED):
                ax.axis("off")
                continue
            name = BENCHMARKED[index]
            for arm, part in frame.groupby("arm"):
                ax.scatter(part[RULES[name].metric], 100 * part["target_acc"], s=5, label=arm)
            ax.set_title(f"{task}: {name}" + (" (min)" if RULES[name].mode == "min" else ""), fontsize=9)
            ax.tick_params(labelsize=7)
            if index % columns == 0:
                ax.set_ylabel("target test acc (%)", fontsize=8)
    axes[0][0].legend(fontsize=5, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_tables(frames: dict[str, pd.DataFrame], out: Path = OUT) -> None:
    from tlbench.report.validator_benchmark import benchmark, summary

    results = benchmark(frames)
    results.round(4).to_csv(out / "per_method.csv", index=False)
    table = summary(results)
    table.round(4).to_csv(out / "table.csv")
    counts = {task: f"{len(f)} checkpoints of {f['run_id'].nunique()} runs" for task, f in frames.items()}
    lines = [
        "Validators ranked by mean weighted Spearman correlation with target test accuracy (checkpoints weighted "
        "by (accuracy rank / N)²; +1 is perfect), mean over methods per task; regrets in target-accuracy points "
        "(lower is better). `oracle` reads target validation labels: the ceiling, never a label-free choice. "
        "Checkpoints: " + "; ".join(f"{t}: {c}" for t, c in counts.items()) + ".",
        "",
        "| rule | " + " | ".join(f"{t} wSpearman | {t} checkpoint regret | {t} hp regret" for t in frames) + " |",
        "|:--|" + "--:|" * (3 * len(frames)),
    ]
    for rule, row in table.iterrows():
        cells = []
        for task in frames:
            cells += [f"{row[('weighted_spearman', task)]:+.2f}", f"{row[('checkpoint_regret', task)]:.2f}", f"{row[('hp_regret', task)]:.2f}"]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    scatter(frames, out / "scatter.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="record the digits checkpoints first (resumes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cost", action="store_true", help="also time each validator (cost.md)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.train:
        train_digits(args.workers)
    frames = load_checkpoints(task_exports())
    if not frames:
        print("no export with validator histories; run with --train first", file=sys.stderr)
        return 1
    write_tables(frames)
    if args.cost:
        costs = cost_table({"digits (360 × 192, 10 classes)": (360, 192, 10), "Office-31-like (1000 × 2048, 31 classes)": (1000, 2048, 31)})
        (OUT / "cost.md").write_text(
            "Median milliseconds per evaluation epoch, one thread, random inputs of each shape "
            "(`experiments/validators/benchmark.py --cost`; machine-dependent).\n\n" + costs.round(1).to_markdown(index=False) + "\n"
        )
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
