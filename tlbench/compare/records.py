"""The committed record of a comparison: `runs.csv` exported from its MLflow store (every run, its tags
and per-epoch history, the protocol as layout), then every table rebuilt from that export alone, so
what is committed is exactly what `tlbench report --from runs.csv` regenerates."""

from __future__ import annotations

from pathlib import Path

from .protocol import Where
from .spec import ComparisonSpec


def write_records(spec: ComparisonSpec, where: Where) -> list[Path]:
    from ..report.fair import layout_of, write_comparison
    from ..report.sources import ExportSource, StoreSource, export_runs

    export = export_runs(StoreSource(where.tracking_uri, spec.experiment), where.out / "runs.csv", layout_of(spec))
    source = ExportSource(export)
    return [export, *write_comparison(source, source.layout, where.out)]
