"""From MLflow runs to paper tables with honest model selection.

    frame = collect(uri, "tlbench")                     # one row per (run, selection rule)
    table = paper_table(frame, rows="adapt.name", cols="data.name", rule="source_val")
    print(table.to_markdown()); table.write("results/")  # .md, .csv, .tex

Each table holds one rule's numbers; oracle numbers (target labels) only ever get their own table.
"""

# Imported eagerly: a lazy `collect` would be shadowed by the submodule of the same name once it is imported.
from .collect import collect, exclusion_notes
from .errors import ReportError
from .plots import bar_plot, budget_plot
from .selection import RULES, Choice, Rule, epoch_table, get_rule
from .tables import PaperTable, load_reference, paper_table, per_config, summarize

__all__ = [
    "collect", "exclusion_notes", "ReportError", "bar_plot", "budget_plot", "RULES", "Choice", "Rule",
    "epoch_table", "get_rule", "PaperTable", "load_reference", "paper_table", "per_config", "summarize",
]
