"""From MLflow runs to paper tables with honest model selection.

    frame = collect(uri, "tlbench")                     # one row per (run, selection rule)
    table = paper_table(frame, rows="adapt.name", cols="data.name", rule="source_val")
    print(table.to_markdown()); table.write("results/")  # .md, .csv, .tex

Each table holds one rule's numbers; oracle numbers (target labels) only ever get their own table.
The names below are imported on first use, so `tlbench report --help` does not pay for pandas and scipy.
"""

from importlib import import_module

#: Public name → submodule that defines it.
_EXPORTS = {
    "collect": "collection",
    "exclusion_notes": "collection",
    "ReportError": "errors",
    "bar_plot": "plots",
    "budget_plot": "plots",
    "RULES": "selection",
    "Choice": "selection",
    "Rule": "selection",
    "epoch_table": "selection",
    "get_rule": "selection",
    "PaperTable": "tables",
    "load_reference": "tables",
    "paper_table": "tables",
    "per_config": "tables",
    "summarize": "tables",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tlbench.report' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
