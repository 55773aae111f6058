"""Does pruning pay? The same study (space, sampler, seed, number of trials) run with and without a pruner
on a fixed small problem (digits, small_cnn, fully fine-tuned): best objective and total training epochs.

    .venv/bin/python experiments/search/pruning_benchmark.py            # ~20-30 min on 2 CPU cores
    .venv/bin/python experiments/search/pruning_benchmark.py --quick    # smoke test, ~1-2 min

Target: the pruned study's best within 1 point of the unpruned best, using ≤ 50% of its epochs.
The random sampler is used by default so both studies draw the same configurations in the same order
(TPE would adapt to which trials were pruned and the two studies would diverge); training is
deterministic, so a configuration that is not pruned scores the same in both studies.
Writes results/search_pruning.md (the command at the top) and keeps the stores under --work-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPACE = {
    "params": {
        "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True},
        "optim.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "head.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
}
FIXED = ["backbone=small_cnn", "data=digits", "freeze=full", "adapt=source_only", "optim.scheduler=cosine", "trainer.enable_progress_bar=false", "seed=0"]
FULL = {"n_trials": 24, "overrides": ["data.synthetic_size=3000", "data.batch_size=64", "trainer.max_epochs=9", "trainer.limit_train_batches=30"]}
QUICK = {
    "n_trials": 4,
    "overrides": ["data.synthetic_size=300", "data.batch_size=32", "trainer.max_epochs=4", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"],
}
PRUNER = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3}


def run_study(label: str, pruner, n_trials: int, overrides: list[str], work: Path, sampler: str, seed: int) -> dict:
    from tlbench.search.space import space_from_dict
    from tlbench.search.study import prepare, run_search

    space = space_from_dict(f"pruning-bench-{label}", {**SPACE, "study": {"sampler": sampler, "pruner": pruner, "seed": seed}})
    job = prepare(
        space,
        FIXED + overrides + [f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "tracking.experiment=pruning_benchmark"],
        n_trials=n_trials,
        storage=f"sqlite:///{work / 'optuna.db'}",
        out_dir=str(work / label),
    )
    started = time.time()
    result = run_search(job)
    result["wall_s"] = time.time() - started
    result["label"] = label
    result["pruner"] = json.dumps(pruner)
    return result


#: Other pruners, replayed on the unpruned study's learning curves (no training): helps choose one.
CANDIDATES = [
    {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    {"type": "percentile", "percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1},
    {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
    {"type": "successive_halving", "min_resource": 1, "reduction_factor": 4},
    {"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
]


def replay(storage: str, study_name: str, replay_name: str, pruner, max_epochs: int) -> dict:
    """What `pruner` would have done: feed the unpruned trials' per-epoch values, in trial order, to a fresh
    in-memory study. Exact for a sequential study with the random sampler (same configurations, same
    deterministic curves; pruners look only at earlier trials' values), so no training is needed."""
    import optuna
    from optuna.trial import TrialState

    from tlbench.search.space import StudySettings, build_pruner

    source = optuna.load_study(study_name=study_name, storage=storage)
    study = optuna.create_study(study_name=replay_name, direction=source.direction, pruner=build_pruner(StudySettings(pruner=pruner), max_epochs))
    epochs, best = 0, None
    for old in sorted(source.get_trials(deepcopy=False), key=lambda t: t.number):
        if old.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        trial = study.ask()
        steps = sorted(old.intermediate_values)
        pruned = False
        for step in steps:
            trial.report(old.intermediate_values[step], step)
            if trial.should_prune():
                epochs += step + 1
                study.tell(trial, state=TrialState.PRUNED)
                pruned = True
                break
        if pruned:
            continue
        epochs += int(old.user_attrs.get("epochs", len(steps)))
        if old.state == TrialState.COMPLETE:
            study.tell(trial, old.value)
            best = old.value if best is None else (max if source.direction.name == "MAXIMIZE" else min)(best, old.value)
        else:
            study.tell(trial, state=TrialState.FAIL)
    return {"pruner": json.dumps(pruner), "epochs": epochs, "best_value": best}


def gap_points(unpruned: dict, other: dict) -> str:
    """Best-objective gap in accuracy points (unpruned − other; > 0 means the other is worse)."""
    if unpruned["best_value"] is None or other["best_value"] is None:
        return "—"
    return f"{100 * (unpruned['best_value'] - other['best_value']):.2f}"


def percent(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%" if b else "n/a"


def report(pruned: dict, unpruned: dict, command: str, quick: bool, replays: list[dict]) -> str:
    def fmt(value, digits=4):
        return "—" if value is None else f"{value:.{digits}f}"

    rows = []
    for r in (unpruned, pruned):
        rows.append(
            f"| {r['label']} | `{r['pruner']}` | {r['n_trials']} | {r['complete']} | {r['pruned']} | {r['failed']} | "
            f"{fmt(r['best_value'])} | {fmt(r.get('best_test_target_acc'))} | {r['epochs']} | {percent(r['epochs'], unpruned['epochs'])} | {r['wall_s']:.0f} |"
        )
    gap = None
    if pruned["best_value"] is not None and unpruned["best_value"] is not None:
        gap = 100 * (unpruned["best_value"] - pruned["best_value"])  # accuracy points, >0 = pruned worse
    within = gap is not None and gap <= 1.0
    cheap = unpruned["epochs"] > 0 and pruned["epochs"] <= 0.5 * unpruned["epochs"]
    lines = [
        "# Pruning benchmark: pruned vs unpruned Optuna study",
        "",
        "```",
        command,
        "```",
        "",
        "**Smoke run (--quick): numbers are not meaningful.**" if quick else "",
        f"Problem: {' '.join(FIXED)} {' '.join((QUICK if quick else FULL)['overrides'])}; objective "
        f"`{unpruned['metric']}` ({unpruned['direction']}) at the selected checkpoint; same sampler, seed and "
        "number of trials in both studies. Epochs = training epochs actually run, summed over trials.",
        "",
        "| study | pruner | trials | complete | pruned | failed | best objective | test target acc of best | epochs | epochs vs unpruned | wall s |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
        f"- Best-objective gap (unpruned − pruned): {'—' if gap is None else f'{gap:.2f} points'} → within 1 point: **{'yes' if within else 'no'}**",
        f"- Epochs: {pruned['epochs']} vs {unpruned['epochs']} ({percent(pruned['epochs'], unpruned['epochs'])}) → ≤ 50%: **{'yes' if cheap else 'no'}**",
        f"- Target met: **{'yes' if within and cheap else 'no'}**",
        "",
        "What-if: other pruners replayed on the unpruned study's learning curves, no training (exact for a",
        "sequential random-sampler study: the first row then matches the pruned study above):",
        "",
        "| pruner | best objective | gap (points) | epochs | epochs vs unpruned |",
        "|:--|--:|--:|--:|--:|",
        *[
            f"| `{r['pruner']}` | {fmt(r['best_value'])} | {gap_points(unpruned, r)} | {r['epochs']} | {percent(r['epochs'], unpruned['epochs'])} |"
            for r in replays
        ],
        "",
        f"MLflow runs: `mlflow ui --backend-store-uri {pruned['storage'].replace('optuna.db', 'mlflow.db')}` (experiment pruning_benchmark).",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (a minute or two)")
    parser.add_argument("--n-trials", type=int, help="trials per study (default 24, --quick 4)")
    parser.add_argument("--sampler", default="random", choices=("random", "tpe"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruner", default=json.dumps(PRUNER), help=f"pruner setting as JSON or a name (default {json.dumps(PRUNER)})")
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "search_pruning_benchmark"))
    parser.add_argument("--out", default=str(REPO / "results" / "search_pruning.md"))
    args = parser.parse_args()

    from tlbench.console import quiet_libraries

    quiet_libraries()
    settings = QUICK if args.quick else FULL
    n_trials = args.n_trials or settings["n_trials"]
    pruner = json.loads(args.pruner) if args.pruner.strip().startswith("{") else args.pruner
    work = Path(args.work_dir) / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    unpruned = run_study("unpruned", "none", n_trials, settings["overrides"], work, args.sampler, args.seed)
    pruned = run_study("pruned", pruner, n_trials, settings["overrides"], work, args.sampler, args.seed)
    storage = f"sqlite:///{work / 'optuna.db'}"
    max_epochs = int(next(o for o in settings["overrides"] if o.startswith("trainer.max_epochs=")).split("=")[1])
    # Replays carry the pruned study's name: Hyperband assigns brackets by hashing study name + trial number.
    replays = [replay(storage, "pruning-bench-unpruned", "pruning-bench-pruned", p, max_epochs) for p in [pruner] + [c for c in CANDIDATES if c != pruner]]
    text = report(pruned, unpruned, command, args.quick, replays)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
