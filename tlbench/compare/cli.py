"""`tlbench compare`: a fair comparison, from tuning to the committed export and tables.

    tlbench compare fair_da_digits --workers 2          # tune every arm, evaluate, bound, sensitivity, report
    tlbench compare fair_da_digits --stages tune,eval --arms source_only,dann
    tlbench compare fair_dg_rotated_fashion --tasks 75    # a comparison with tasks: one of them
    tlbench compare --list

Running the same command again resumes: finished trials and runs are kept. The output folder
(results/<name> by default) gets the MLflow store and Optuna storage (not committed), `runs.csv` (every
run with its per-epoch history: the tables rebuild from it with `tlbench report --from`), `tuning.csv`
and the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import TlbenchError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tlbench compare", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
    )
    p.add_argument("name", nargs="?", help="conf/compare/<name>.yaml or a yaml path")
    p.add_argument("--workers", type=int, default=1, help="worker processes per stage (default 1; 2 on a 2-core machine)")
    p.add_argument("--out", help="output folder (default results/<name>)")
    p.add_argument(
        "--stages",
        default="tune,eval,upper_bound,sensitivity,report",
        help="comma-separated subset of tune,eval,upper_bound,sensitivity,report (default: all, in that order); "
        "summary alone rebuilds a comparison's summary.md from its tasks' tables",
    )
    p.add_argument("--arms", help="comma-separated arms for tune/eval (default: all)")
    p.add_argument("--tasks", help="comma-separated tasks of a comparison with tasks (default: all); each runs in <out>/<task>")
    p.add_argument("--list", action="store_true", help="list the comparisons in conf/compare and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..console import quiet_libraries
    from .spec import available, load_spec

    if args.list:
        print("\n".join(available()))
        return 0
    if not args.name:
        print("tlbench compare: error: name a comparison (tlbench compare --list)", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        spec = load_spec(args.name)
        from .protocol import run, task_runs

        out = Path(args.out or Path("results") / spec.name)
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        arms = args.arms.split(",") if args.arms else None
        for task, task_spec, where in task_runs(spec, out, args.tasks.split(",") if args.tasks else None):
            if task:
                print(f"[tlbench compare] {spec.name}: task {task}", flush=True)
            run(task_spec, where, [s for s in stages if s not in ("report", "summary")], arms, args.workers)
            if "report" in stages:
                from .records import write_records

                for path in write_records(task_spec, where):
                    print(f"[tlbench compare] wrote {path}")
        if spec.tasks and ("report" in stages or "summary" in stages):
            from ..report.fair import layout_of, write_task_summary

            for path in write_task_summary(out, list(spec.tasks), layout_of(spec), spec.title):
                print(f"[tlbench compare] wrote {path}")
    except TlbenchError as exc:
        print(f"tlbench compare: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, SystemExit):
        print("tlbench compare: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
