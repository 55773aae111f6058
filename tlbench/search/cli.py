"""`tlbench search`: an Optuna study over Hydra overrides, every trial an MLflow run under one parent.

    tlbench search --space lr_wd backbone=small_cnn trainer.max_epochs=10 --n-trials 30 --workers 2
    tlbench search --space dann 'optim.lr=tag(log,interval(1e-4,1e-1))' --storage postgresql://user@db/optuna
    tlbench search --list

Running the same command again resumes the study (same study name and storage).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import TlbenchError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tlbench search",
        description="Hyperparameter search with Optuna: each trial is a tlbench run (one MLflow child run) with "
        "overrides drawn from a search space; the objective is the validation metric of the run's selection "
        "rule at its selected checkpoint (val/source_acc by default).",
        epilog="Overrides are Hydra overrides (backbone=small_cnn trainer.max_epochs=10); sweeps in Hydra syntax "
        "add search params (optim.lr='tag(log,interval(1e-4,1e-1))', freeze=choice(full,linear_probe), seed=range(0,3)); "
        "a plain override of a searched key fixes it. Run the same command again to resume.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every trial, or sweeps to search")
    p.add_argument("--space", default="default", help="conf/search/<name>.yaml or a yaml path (default: default)")
    p.add_argument("--n-trials", type=int, help="trials in the study in total (default: the space's study.n_trials)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study (default 1)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna.db in the working dir; postgresql://… to share a study between machines)")
    p.add_argument("--study-name", help="default: the space name")
    p.add_argument("--sampler", choices=("tpe", "random", "grid", "cmaes"))
    p.add_argument("--pruner", choices=("median", "percentile", "hyperband", "successive_halving", "threshold", "none"))
    p.add_argument("--rule", help="selection rule whose metric the trials optimise (same as selection=<rule>; e.g. bnm or im to tune without target labels)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the space's study.seed)")
    p.add_argument("--out-dir", help="trial outputs (default outputs/search/<study name>)")
    p.add_argument("--list", action="store_true", help="list the search spaces in conf/search and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from ..console import quiet_libraries
    from .space import available_spaces, load_space
    from .study import prepare, run_search

    if args.list:
        for name in available_spaces():
            print(name)
        return 0
    quiet_libraries()
    if args.rule:
        args.overrides.append(f"selection={args.rule}")
    try:
        job = prepare(
            load_space(args.space),
            args.overrides,
            n_trials=args.n_trials,
            storage=args.storage,
            study_name=args.study_name,
            sampler=args.sampler,
            pruner=args.pruner,
            seed=args.seed,
            out_dir=args.out_dir,
        )
        result = run_search(job, workers=args.workers)
    except TlbenchError as exc:
        print(f"tlbench search: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C/SIGTERM into SystemExit(1)
        print("tlbench search: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print_result(result, job)
    return 0


def print_result(result: dict, job) -> None:
    print(
        f"\n[tlbench search] study '{result['study_name']}': {result['complete']} complete, {result['pruned']} pruned, "
        f"{result['failed']} failed ({result['lost']} lost and rerun); {result['epochs']} training epochs in {result['seconds']:.0f}s"
    )
    if result["best_value"] is not None:
        from .space import format_value

        params = " ".join(f"{k}={format_value(v)}" for k, v in result["best_params"].items())
        print(f"[tlbench search] best: trial {result['best_trial']} {result['metric']}={result['best_value']:.4f}  {params}")
        rerun = shlex.join(result.get("best_overrides") or [*job.fixed, *params.split()])
        print(f"[tlbench search] best run: {result['best_run_id']}  (rerun: tlbench {rerun})")
    from ..tracking import ui_hint

    print(f"[tlbench search] MLflow parent run {result['parent_run_id']}: {ui_hint(job.tracking_uri)}")
    print(f"[tlbench search] the study live in a browser: optuna-dashboard {shlex.quote(job.storage)}   (then http://127.0.0.1:8080)")


if __name__ == "__main__":
    raise SystemExit(main())
