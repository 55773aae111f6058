"""`tlbench report`: MLflow runs → Markdown table on stdout, and with --out the table as .md/.csv/.tex
plus PNG plots. Mistakes (missing experiment, unknown key, mixed cells) are one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import TlbenchError
from ..selection import DEFAULT_RULE, RULES
from ..tracking import DEFAULT_TIMEOUT_S, check_server, resolve_uri, server_error
from .errors import ReportError

MAX_LISTED_EXCLUSIONS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=sys.argv[0] if sys.argv and sys.argv[0].startswith("tlbench") else "tlbench report",
        description="Tables and plots of recorded runs, one model-selection rule per table.",
    )
    parser.add_argument(
        "--from",
        dest="from_export",
        metavar="RUNS_CSV",
        help="rebuild a study's tables from its committed "
        "export (results/<study>/runs.csv) instead of an MLflow store; its layout says which tables (with --out)",
    )
    parser.add_argument("--uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir)")
    parser.add_argument("--experiment", default="tlbench", help="MLflow experiment name (default: tlbench)")
    parser.add_argument("--filter", default="", help="MLflow filter string, e.g. \"params.backbone.name = 'resnet50'\"")
    parser.add_argument("--sweep", metavar="ID|NAME|latest", help="only the runs of one sweep (tlbench -m) or search: its parent run id or name, or latest")
    parser.add_argument("--rows", default="adapt.name", help="config key(s) for table rows, comma-separated (default: adapt.name)")
    parser.add_argument("--cols", default="data.name", help="config key(s) for table columns; 'task' = source→target (default: data.name)")
    label_free = [name for name, rule in RULES.items() if not rule.uses_target_labels]
    parser.add_argument("--rule", default=DEFAULT_RULE, choices=label_free, help=f"selection rule of the main table (default: {DEFAULT_RULE})")
    parser.add_argument("--oracle", action="store_true", help="add a separate, labelled table of oracle selection (uses target labels)")
    parser.add_argument("--reference", metavar="FILE", help="YAML/JSON of published numbers, e.g. {dann: 76.66}, shown beside ours")
    parser.add_argument("--out", metavar="DIR", help="write table.md/.csv/.tex (oracle.* with --oracle), bars.png and budget.png here")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for a remote tracking server per request (default: {DEFAULT_TIMEOUT_S})",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="also tabulate a metric measured once per run, e.g. analysis/a_distance (tracking.analysis=true); repeatable",
    )
    parser.add_argument("--budget-lines", default="freeze.name", help="key(s) for the lines of the label-budget plot (default: freeze.name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return report(args)
    except TlbenchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code


def report_from_export(args: argparse.Namespace) -> int:
    """`--from runs.csv --out DIR`: the tables the export's layout names, byte for byte as committed."""
    from .sources import ExportSource

    if not args.out:
        raise ReportError("--from needs --out DIR (where the rebuilt tables go)")
    source = ExportSource(Path(args.from_export))
    kind = source.layout.get("kind")
    if kind == "paper":  # the tables `tlbench report --out` wrote, with the options recorded in the layout
        layout = source.layout
        recorded = {k: layout[k] for k in ("rows", "cols", "rule", "oracle", "budget_lines")}
        options = argparse.Namespace(**{**vars(args), **recorded, "metric": layout.get("metric", [])})
        from .collection import collect_runs

        frame = collect_runs(source, rules=[layout["rule"]] + (["oracle"] if layout["oracle"] else []), run_metrics=options.metric)
        written = write_paper_tables(frame, options, layout.get("reference"), Path(args.out))
    elif kind == "comparison":
        from .fair import write_comparison

        written = write_comparison(source, source.layout, Path(args.out))
    else:
        raise ReportError(f"--from {args.from_export}: layout kind '{kind}' is not known; known: comparison, paper")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def paper_layout(args: argparse.Namespace, reference) -> dict:
    """What `--from` needs to rebuild a report's tables: its options and the published numbers it showed."""
    options = {"rows": args.rows, "cols": args.cols, "rule": args.rule, "oracle": bool(args.oracle), "budget_lines": args.budget_lines}
    if args.metric:  # older layouts have no key: their tables rebuild as before
        options["metric"] = list(args.metric)
    return {"kind": "paper", **options, "reference": reference}


def write_paper_tables(frame, args: argparse.Namespace, reference, out: Path | None) -> list[Path]:
    """Print the report's tables (and write them, with the plots, to `out`)."""
    from .tables import paper_table, run_metric_table

    tables = {"table": paper_table(frame, args.rows, args.cols, args.rule, reference)}
    if args.oracle:
        tables["oracle"] = paper_table(frame, args.rows, args.cols, "oracle")
    for metric in getattr(args, "metric", None) or []:
        tables[metric.replace("/", "_")] = run_metric_table(frame, metric, args.rows, args.cols, args.rule)
    print("\n".join(table.to_markdown() for table in tables.values()), end="")
    if not out:
        return []
    written = [path for stem, table in tables.items() for path in table.write(out, stem)]
    return written + write_plots(frame, out, args)


def report(args: argparse.Namespace) -> int:
    from .collection import collect, exclusion_notes

    if args.from_export:
        return report_from_export(args)
    from .tables import load_reference

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ReportError(f"--timeout: must be a positive number of seconds, got {args.timeout:g}")
    rules = [args.rule] + (["oracle"] if args.oracle else [])
    uri = resolve_uri(args.uri)
    check_server(uri, args.timeout)  # a sick server: one line within --timeout, not minutes of retries
    filter_string = args.filter
    if args.sweep:
        from .collection import sweep_filter

        filter_string = tuple(" and ".join(f for f in (one, args.filter) if f) for one in sweep_filter(uri, args.experiment, args.sweep))
    try:
        frame = collect(args.uri, args.experiment, filter_string, rules=rules, run_metrics=args.metric)
    except Exception as exc:
        error = server_error(exc, uri, "reading runs")
        if error is None:
            raise
        raise error from None
    for name, status, reason in frame.attrs["excluded_runs"][:MAX_LISTED_EXCLUSIONS]:
        print(f"excluded {status} run {name}" + (f": {reason}" if reason else ""), file=sys.stderr)
    if frame.empty:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise ReportError(" ".join([f"no FINISHED runs in experiment '{args.experiment}'{where}."] + exclusion_notes(frame.attrs)))
    reference = load_reference(args.reference) if args.reference else None
    written = write_paper_tables(frame, args, reference, Path(args.out) if args.out else None)
    if args.out:  # the per-run export the tables rebuild from: `tlbench report --from <out>/runs.csv --out DIR`
        from .sources import StoreSource, export_runs

        written.append(export_runs(StoreSource(args.uri, args.experiment, filter_string), Path(args.out) / "runs.csv", paper_layout(args, reference)))
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def write_plots(frame, out: Path, args: argparse.Namespace) -> list[Path]:
    """Bars always; the budget plot when runs span several label budgets (skipped with a note if it cannot be drawn)."""
    from .plots import BUDGET_KEY, bar_plot, budget_plot

    paths = [bar_plot(frame, out / "bars.png", args.rows, args.cols, args.rule)]
    if BUDGET_KEY in frame.columns and frame[BUDGET_KEY].nunique() > 1:
        try:
            path = budget_plot(frame, out / "budget.png", args.budget_lines, args.cols, args.rule)
        except ReportError as exc:
            print(f"budget plot skipped: {exc}", file=sys.stderr)
        else:
            paths += [path] if path else []
    return paths
