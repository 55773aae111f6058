"""Run a reproduction or benchmark described by experiments/<name>/spec.yaml, then write its tables and
plots to results/<name>/ with `tlbench report`.

    .venv/bin/python experiments/run.py <name> [--check] [--report-only]

The spec names the domains it needs; they are checked first and anything missing is printed with how to
get it (no training starts). Each run is recorded in the MLflow store `results/<name>/mlflow.db`, and
`tracking.skip_done=true` makes an interrupted benchmark resume where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TLBENCH = [sys.executable, "-m", "tlbench"]


def missing_data(spec: dict) -> list[str]:
    """One line per required domain that cannot be built here (DataError message)."""
    from tlbench.config import DataConfig
    from tlbench.data import build_domain
    from tlbench.errors import TlbenchError

    problems = []
    for domain in spec.get("needs", []):
        try:
            build_domain(domain, DataConfig(), seed=0)
        except TlbenchError as exc:
            problems.append(f"{domain}: {exc}")
    return problems


def display(command: list[str]) -> str:
    """A command as a user would type it: `tlbench ...` for the CLI, paths relative to the checkout."""
    shown = ["tlbench", *command[3:]] if command[1:3] == ["-m", "tlbench"] else [".venv/bin/python", *command[1:]]
    return shlex.join(shown).replace(str(ROOT) + "/", "")


def write_provenance(out: Path, name: str, spec: dict, commands: list[list[str]]) -> None:
    """results/<name>/README.md: what was run, on which data, and the commands that made these files."""
    lines = [f"# {spec['title']}", "", spec.get("protocol", "").strip(), ""]
    if spec.get("paper"):
        lines += [f"Paper: {spec['paper']}", ""]
    lines += [
        "Regenerate everything here (runs recorded in `mlflow.db` beside this file, finished ones skipped):",
        "",
        f"    .venv/bin/python experiments/run.py {name}",
        "",
        "which runs:",
        "",
        *[f"    {display(c)}" for c in commands],
        "",
        "Every table states the model-selection rule that chose its numbers; oracle numbers (target labels) "
        "appear only in files named `oracle.*`. Learning curves per configuration (mean ± std over seeds, per "
        "optimizer step): `curves.png` / `curves.csv`; wall seconds per run and total CPU time: `cost.md`.",
        "",
        f"`runs.csv` is the per-run export: `tlbench report --from results/{name}/runs.csv --out DIR` rebuilds the main "
        "tables without the MLflow store or any training.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def sweep_dir(name: str, index: int, sweep: list[str]) -> Path:
    """The sweep's folder, named by its overrides too: a rerun of the same sweep resumes in it (its parent
    run and job markers), a changed spec's sweep at the same position gets its own."""
    digest = hashlib.sha256("\n".join(sweep).encode()).hexdigest()[:8]
    return ROOT / "multirun" / name / f"{index}-{digest}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="folder under experiments/ holding spec.yaml")
    parser.add_argument("--check", action="store_true", help="only check that the data is present")
    parser.add_argument("--report-only", action="store_true", help="only rebuild tables from recorded runs")
    parser.add_argument(
        "--sweeps",
        metavar="I,J",
        help="run only these sweeps of the spec (0-based) and no reports: split a benchmark over several processes, then rerun without --sweeps to finish",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="intra-op threads per run (OMP_NUM_THREADS); 1 with one process per core is faster than 2 threads for small networks",
    )
    args = parser.parse_args()

    folder = ROOT / "experiments" / args.name
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    problems = missing_data(spec)
    if problems:
        print(f"{args.name}: cannot run here, data is missing:", *problems, sep="\n  ")
        return 2
    if args.check:
        print(f"{args.name}: all data present")
        return 0
    out = ROOT / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"

    tracking = [f"tracking.uri={uri}", f"tracking.experiment={args.name}", "tracking.skip_done=true", f"checkpoint_dir={ROOT / 'checkpoints' / args.name}"]
    sweeps = [TLBENCH + ["-m", *sweep, *tracking, f"hydra.sweep.dir={sweep_dir(args.name, index, sweep)}"] for index, sweep in enumerate(spec["sweeps"])]
    reports = []
    for index, report in enumerate(spec.get("reports", [])):
        target = out if index == 0 else out / report.get("name", str(index))
        extra = ["--reference", str(folder / report["reference"])] if "reference" in report else []
        reports.append(TLBENCH + ["report", "--uri", uri, "--experiment", args.name, "--out", str(target), *report["args"], *extra])
    first = spec.get("reports", [{}])[0].get("args", [])
    curve_rows = spec.get("curves_rows") or (first[first.index("--rows") + 1] if "--rows" in first else "adapt.name")
    # Learning curves and per-run cost: the evidence that the runs trained to convergence.
    curve_filter = ["--filter", first[first.index("--filter") + 1]] if "--filter" in first else []  # the same runs as the tables
    curves = [sys.executable, "-m", "tlbench.report.curves", "--uri", uri, "--experiment", args.name, "--rows", curve_rows, "--out", str(out)]
    reports.append(curves + curve_filter)
    commands = reports if args.report_only else sweeps + reports
    if args.sweeps:
        commands = [sweeps[int(i)] for i in args.sweeps.split(",")]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))

    started = time.time()
    for command in commands:
        print("$", display(command), flush=True)
        result = subprocess.run(command, cwd=ROOT, env=env)
        if result.returncode != 0:
            print(f"{args.name}: command failed with exit code {result.returncode}; runs recorded so far are kept")
            return result.returncode
    if args.sweeps:
        print(f"{args.name}: sweeps {args.sweeps} done in {time.time() - started:.0f}s")
        return 0
    write_provenance(out, args.name, spec, sweeps + reports)
    print(f"{args.name}: done in {time.time() - started:.0f}s; tables in {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
