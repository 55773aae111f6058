"""Do the transferability scores rank pretrained models the way fine-tuning does? (issue 17.4)

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python experiments/ranking/benchmark.py [--report-only]

Builds the zoo (experiments/ranking/zoo.py), scores every candidate of benchmark.yaml on every task and
seed with `tlbench rank`, fine-tunes each (linear probe and full, same seeds) as ordinary `tlbench` runs,
then writes results/ranking/: scores beside accuracies, weighted Kendall tau per estimator and task, top-1
regret, and the time to score vs the time to fine-tune. Everything is recorded in results/ranking/mlflow.db
with skip_done, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load(Path(__file__).with_name("benchmark.yaml").read_text())
OUT = ROOT / "results" / "ranking"
URI = f"sqlite:///{OUT / 'mlflow.db'}"
COMMAND = "OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python experiments/ranking/benchmark.py"
ESTIMATORS = ["logme", "leep", "nce", "hscore", "knn"]


def tracking(experiment: str, task: str) -> list[str]:
    return [f"tracking.uri={URI}", f"tracking.experiment={experiment}", "tracking.skip_done=true", f"+tracking.tags.task={task}"]


def candidate_overrides(name: str) -> list[str]:
    """The backbone overrides `tlbench` needs to fine-tune a candidate (zoo members by their runs:/ weights)."""
    from tlbench.config import TrackingConfig
    from tlbench.rank import load_candidate, zoo_run
    from tlbench.tracking import Store

    candidate = load_candidate(name)
    weights = candidate.weights
    if weights == "zoo":
        weights = f"runs:/{zoo_run(Store.of(TrackingConfig(uri=URI)), name)}/backbone/backbone.pt"
    return [f"backbone={candidate.backbone}", *([f"backbone.weights={weights}"] if weights else [])]


def score_all() -> None:
    from tlbench.rank import rank, ranking_table

    for task, overrides in SPEC["tasks"].items():
        for seed in SPEC["seeds"]:
            rows = rank([f"candidates=[{','.join(SPEC['candidates'])}]", *overrides, f"seed={seed}", *tracking("rank", task)])
            print(f"## {task} seed {seed}\n{ranking_table(rows)}", flush=True)


def finetune_all() -> None:
    import tlbench
    from tlbench.errors import TlbenchError
    from tlbench.tracking import client_for

    finetune = SPEC["finetune"]
    for task, overrides in SPEC["tasks"].items():
        for name in SPEC["candidates"]:
            backbone = candidate_overrides(name)
            for schedule in ("linear_probe", "full"):
                for seed in SPEC["seeds"]:
                    run = tlbench.compose(
                        [
                            *overrides,
                            *backbone,
                            *finetune["common"],
                            *finetune[schedule],
                            f"seed={seed}",
                            *tracking("finetune", task),
                            f"+tracking.tags.rank_candidate={name}",
                            f"tracking.run_name='{schedule} s{seed} · {name} · {task}'",
                            f"checkpoint_dir={ROOT / 'checkpoints' / 'ranking'}",
                            f"output_dir={ROOT / 'outputs' / 'ranking'}",
                        ]
                    )
                    started = time.perf_counter()
                    try:
                        result = tlbench.record(run)
                    except TlbenchError as exc:
                        print(f"ranking: {task} {name} {schedule} s{seed} failed: {exc}", flush=True)
                        continue
                    if "run_id" in result:  # wall time with data loading and feature caching, which the run's own times leave out
                        client_for(URI).log_metric(result["run_id"], "wall_seconds", time.perf_counter() - started)


def latest(frame, keys: list[str]):
    """One row per key combination: the newest FINISHED run (a config rerun after a code change counts once)."""
    frame = frame[frame["status"] == "FINISHED"].sort_values("start_time")
    return frame.groupby(keys, as_index=False).last()


def collect():
    """(scores, accuracies): one row per task × candidate × seed (× schedule)."""
    import mlflow

    mlflow.set_tracking_uri(URI)
    scores = latest(mlflow.search_runs(experiment_names=["rank"]), ["tags.task", "tags.rank_candidate", "params.seed"])
    runs = mlflow.search_runs(experiment_names=["finetune"])
    runs["seconds"] = runs.get("metrics.wall_seconds")
    accuracies = latest(runs, ["tags.task", "tags.rank_candidate", "params.freeze.name", "params.seed"])
    return scores, accuracies


def summarise(scores, accuracies):
    """Per task and candidate: mean scores and timings over seeds, accuracy mean/std per schedule."""
    import pandas as pd

    score_cols = {f"metrics.rank/{e}": e for e in ESTIMATORS}
    scores = scores.assign(score_seconds=scores["metrics.rank/feature_seconds"] + scores["metrics.rank/score_seconds"])
    mean_scores = scores.groupby(["tags.task", "tags.rank_candidate"])[[*score_cols, "score_seconds"]].mean().rename(columns=score_cols)
    acc = accuracies.pivot_table(
        index=["tags.task", "tags.rank_candidate"],
        columns="params.freeze.name",
        values=["metrics.test/target_acc", "seconds"],
        aggfunc=["mean", "std", "count"],
    )
    table = pd.DataFrame(index=mean_scores.index.union(acc.index))
    for schedule in ("linear_probe", "full"):
        for stat in ("mean", "std", "count"):
            if (stat, "metrics.test/target_acc", schedule) in acc.columns:
                table[f"{schedule}_{stat}"] = acc[(stat, "metrics.test/target_acc", schedule)]
        if ("mean", "seconds", schedule) in acc.columns:
            table[f"{schedule}_seconds"] = acc[("mean", "seconds", schedule)]
    return table.join(mean_scores)


def weighted_tau(table):
    """Weighted Kendall tau per estimator × task × schedule over the candidates both sides have (n beside)."""
    import pandas as pd
    from scipy.stats import weightedtau

    rows = []
    for task, part in table.groupby(level=0):
        for schedule in ("full", "linear_probe"):
            for estimator in ESTIMATORS:
                pair = part[[estimator, f"{schedule}_mean"]].dropna() if f"{schedule}_mean" in part else pd.DataFrame()
                if len(pair) < 3:
                    continue
                tau = weightedtau(pair[estimator].to_numpy(), pair[f"{schedule}_mean"].to_numpy())[0]
                best = pair[f"{schedule}_mean"].max()
                pick = pair[f"{schedule}_mean"].loc[pair[estimator].idxmax()]
                rows.append(
                    {"task": task, "schedule": schedule, "estimator": estimator, "tau_w": tau, "top1_regret": 100 * (best - pick), "candidates": len(pair)}
                )
    return pd.DataFrame(rows)


def per_seed_tau(scores, accuracies):
    """Weighted tau with each seed's own labelled split and fine-tuning runs: how much one seed's ranking varies."""
    import pandas as pd

    rows = []
    for seed, seed_scores in scores.groupby("params.seed"):
        seed_acc = accuracies[accuracies["params.seed"] == seed]
        table = summarise(seed_scores, seed_acc)
        rows.append(weighted_tau(table).assign(seed=seed))
    return pd.concat(rows) if rows else pd.DataFrame()


def fmt(mean, std) -> str:
    return "" if mean != mean else f"{100 * mean:.1f} ± {100 * (std if std == std else 0):.1f}"


def write_report(table, taus, accuracies, per_seed) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    untimed = int(accuracies["seconds"].isna().sum())
    table.to_csv(OUT / "scores_vs_accuracy.csv")
    taus.to_csv(OUT / "weighted_tau.csv", index=False)
    lines = [
        f"# {SPEC['title']}",
        "",
        SPEC["protocol"].strip(),
        "",
        "Regenerate (zoo, scores, fine-tuning, these files; finished runs are skipped):",
        "",
        f"    {COMMAND}",
        "",
        "Runs: `results/ranking/mlflow.db` (experiments `zoo`, `rank`, `finetune`; not committed).",
        "",
    ]
    if not taus.empty:
        for schedule in ("full", "linear_probe"):
            part = taus[taus["schedule"] == schedule]
            if part.empty:
                continue
            tau = part.pivot(index="estimator", columns="task", values="tau_w").reindex(ESTIMATORS)
            tau["mean"] = tau.mean(axis=1)
            regret = part.pivot(index="estimator", columns="task", values="top1_regret").reindex(ESTIMATORS)
            seeds = per_seed[per_seed["schedule"] == schedule].groupby(["estimator", "task"])["tau_w"].agg(["mean", "std"])
            spread = seeds.apply(lambda r: f"{r['mean']:+.2f} ± {r['std']:.2f}", axis=1).unstack().reindex(ESTIMATORS)
            count = part.pivot(index="estimator", columns="task", values="candidates").reindex(ESTIMATORS)
            lines += [
                f"## Weighted Kendall tau: score vs {schedule.replace('_', ' ')} test accuracy",
                "",
                "(candidates per cell in parentheses: LEEP/NCE only score models with a source head)",
                "",
                tau.apply(
                    lambda col: [f"{v:+.2f}" + (f" ({int(n)})" if col.name != "mean" else "") for v, n in zip(col, count.get(col.name, count.iloc[:, 0]))]
                ).to_markdown(),
                "",
                "The same, computed per seed (that seed's labelled split and fine-tuning runs), mean ± std over seeds:",
                "",
                spread.to_markdown(),
                "",
                f"Top-1 regret (points of {schedule.replace('_', ' ')} accuracy lost by taking each estimator's first pick):",
                "",
                regret.map(lambda v: f"{v:.1f}").to_markdown(),
                "",
            ]
    for task, part in table.groupby(level=0):
        shown = part.droplevel(0)
        view = {
            "linear probe %": [fmt(m, s) for m, s in zip(shown.get("linear_probe_mean", []), shown.get("linear_probe_std", []))],
            "full FT %": [fmt(m, s) for m, s in zip(shown.get("full_mean", []), shown.get("full_std", []))],
        }
        for estimator in ESTIMATORS:
            view[estimator] = [f"{v:.3f}" if v == v else "–" for v in shown[estimator]]
        view["score s"] = [f"{v:.2f}" for v in shown["score_seconds"]]
        view["LP s"] = [f"{v:.1f}" for v in shown.get("linear_probe_seconds", [float("nan")] * len(shown))]
        view["full s"] = [f"{v:.1f}" for v in shown.get("full_seconds", [float("nan")] * len(shown))]
        import pandas as pd

        frame = pd.DataFrame(view, index=shown.index).sort_values(
            "full FT %", key=lambda c: c.str.split(" ").str[0].astype(float, errors="ignore"), ascending=False
        )
        lines += [f"## {task}: scores (mean over seeds) beside test accuracy (mean ± std over seeds)", "", frame.to_markdown(disable_numparse=True), ""]
    lines += [
        "## Cost",
        "",
        "Median wall seconds per candidate: scoring (building the model, features of the labelled split, all "
        "estimators) vs one fine-tuning run (data, model, feature caching for the linear probe — paid by its first "
        "seed —, 100 steps, validation, test).",
        "",
        table.groupby(level=0)[["score_seconds", "linear_probe_seconds", "full_seconds"]].median().round(2).to_markdown(),
        "",
        f"{untimed} of {len(accuracies)} fine-tuning runs have no wall time (finished before the benchmark measured "
        "it) and are left out of the medians. Scoring times exclude loading the task's data, done once per task "
        "and seed for all candidates.",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true", help="only rebuild results/ranking from recorded runs")
    args = parser.parse_args()
    from tlbench.console import quiet_libraries

    quiet_libraries()  # tlbench's own progress lines, not Lightning's and MLflow's chatter
    started = time.time()
    if not args.report_only:
        if subprocess.run([sys.executable, str(ROOT / "experiments" / "ranking" / "zoo.py"), "--uri", URI], cwd=ROOT).returncode:
            return 1
        score_all()
        finetune_all()
    scores, accuracies = collect()
    table = summarise(scores, accuracies)
    write_report(table, weighted_tau(table), accuracies, per_seed_tau(scores, accuracies))
    print(f"ranking: done in {time.time() - started:.0f}s; results in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
