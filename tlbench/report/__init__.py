"""From MLflow runs to paper tables with honest model selection.

    frame = collect(uri, "tlbench")                     # one row per (run, selection rule)
    table = paper_table(frame, rows="adapt.name", cols="data.name", rule="source_val")
    print(table.to_markdown()); table.write("results/")  # .md, .csv, .tex

Each table holds one rule's numbers; oracle numbers (target labels) only ever get their own table.
"""

# Names are imported on first use (PEP 562) so that `tlbench report --help` does not pay for pandas,
# scipy and matplotlib.
_WHERE = {
    "collect": "collect", "exclusion_notes": "collect", "ReportError": "errors", "bar_plot": "plots",
    "budget_plot": "plots", "RULES": "selection", "Choice": "selection", "Rule": "selection",
    "epoch_table": "selection", "get_rule": "selection", "PaperTable": "tables", "load_reference": "tables",
    "paper_table": "tables", "per_config": "tables", "summarize": "tables",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
