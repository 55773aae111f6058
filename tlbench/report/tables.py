"""Paper tables from the tidy frame of `collect`: one selection rule per table, mean ± std over seeds.

A table cell is exactly one configuration aggregated over its seeds; if two configurations land in the
same cell (say two learning rates), that is an error naming the keys that differ, never a silent average.
From-scratch runs (`freeze.name=scratch`) are baselines: unless the table's keys include `freeze.name`
they are not rows, and each other configuration with a matching scratch configuration (same config
apart from the freezing schedule and backbone weights) gets a transfer gain = ours − scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .collect import RESULT_COLUMNS, exclusion_notes
from .errors import ReportError
from .selection import DEFAULT_RULE, Rule, get_rule

AVG = "Avg"
STAT_COLUMNS = ["mean", "std", "n"]
GAIN_COLUMNS = ["scratch_mean", "scratch_std", "scratch_n", "gain", "negative_transfer", "beyond_std"]


def parse_keys(keys: str | Iterable[str]) -> list[str]:
    """'adapt.name,freeze.name' or a list → ['adapt.name', 'freeze.name']."""
    parts = keys.split(",") if isinstance(keys, str) else list(keys)
    return [k.strip() for k in parts if k.strip()]


def labels(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The display label of each `summarize` row for `keys`: values joined by ' / '."""
    return table[[f"label:{k}" for k in keys]].agg(" / ".join, axis=1)


def sort_labels(values: Iterable[str]) -> list[str]:
    """Numbers in numeric order (label budgets: 5 before 10), then text in alphabetical order."""

    def key(label: str) -> tuple:
        try:
            return (0, float(label), "")
        except ValueError:
            return (1, 0.0, label)

    return sorted(set(values), key=key)


def per_config(frame: pd.DataFrame, rule: str | Rule) -> pd.DataFrame:
    """One row per configuration under `rule`: mean/std/n of target accuracy over seeds, in percent."""
    rule = rule if isinstance(rule, Rule) else get_rule(rule)
    chosen = frame[(frame["rule"] == rule.name) & frame["target_acc"].notna()]
    if chosen.empty:
        raise ReportError(f"no finished runs with a '{rule.name}' result to tabulate")
    grouped = chosen.groupby("config_id", sort=False)
    stats = grouped["target_acc"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    stats[["mean", "std"]] *= 100.0
    first = grouped.first().drop(columns=["target_acc", "source_acc", "run_id", "run_name", "start_time"])
    return stats.join(first).reset_index()


def summarize(frame: pd.DataFrame, keys: list[str], rule: str | Rule) -> pd.DataFrame:
    """`per_config` restricted to what a table or plot over `keys` shows, with a `label:<key>` per key.

    From-scratch configurations are set aside as baselines unless `freeze.name` is one of the keys
    (or nothing else is there); two configurations with the same key values are an error.
    """
    return _restrict(frame, per_config(frame, rule), keys)


def _restrict(frame: pd.DataFrame, configs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    unknown = [k for k in keys if k not in frame.columns]
    if unknown:
        known = sorted(c for c in frame.columns if c not in RESULT_COLUMNS)
        raise ReportError(f"key(s) {', '.join(unknown)} not recorded; known keys: {', '.join(known)}")
    if "freeze.name" not in keys and configs["is_scratch"].any() and not configs["is_scratch"].all():
        configs = configs[~configs["is_scratch"]]
    configs = configs.assign(**{f"label:{k}": configs[k].astype(str) for k in keys})
    _check_one_config_per_cell(configs, keys, frame.attrs.get("config_keys") or [c for c in frame.columns if c not in RESULT_COLUMNS])
    return configs.reset_index(drop=True)


def _check_one_config_per_cell(configs: pd.DataFrame, keys: list[str], config_keys: list[str]) -> None:
    for values, group in configs.groupby([f"label:{k}" for k in keys], sort=True):
        if len(group) < 2:
            continue
        differing = [
            f"{k} ({' | '.join(sorted(group[k].astype(str).unique()))})"
            for k in config_keys
            if k in group.columns and k not in keys and group[k].astype(str).nunique() > 1
        ]
        cell = " / ".join(values if isinstance(values, tuple) else (values,))
        raise ReportError(
            f"cell '{cell}' mixes {len(group)} configurations that differ in {', '.join(differing) or 'unrecorded keys'}; "
            "add the key to --rows/--cols or narrow the runs with --filter"
        )


def _gains(table: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """Attach the matching scratch baseline's stats and gain = ours − scratch (percentage points).

    `beyond_std`: |gain| larger than the larger of the two seed stds, i.e. not explained by seed noise
    (undefined with a single seed)."""
    scratch = configs[configs["is_scratch"]]
    scratch = scratch.drop_duplicates("baseline_id", keep=False)  # two scratch candidates: no single baseline
    base = scratch.set_index("baseline_id")[STAT_COLUMNS].rename(columns=lambda c: f"scratch_{c}")
    merged = table.join(base, on="baseline_id")
    merged.loc[merged["is_scratch"], ["scratch_mean", "scratch_std", "scratch_n"]] = float("nan")
    merged["gain"] = merged["mean"] - merged["scratch_mean"]
    merged["negative_transfer"] = (merged["gain"] < 0).where(merged["gain"].notna())
    noise = merged[["std", "scratch_std"]].max(axis=1, skipna=False)
    merged["beyond_std"] = (merged["gain"].abs() > noise).where(noise.notna() & merged["gain"].notna())
    return merged


@dataclass
class PaperTable:
    """Rows × columns of one rule's results, plus gains over scratch and published reference numbers."""

    rule: Rule
    rows: list[str]
    cols: list[str]
    #: Long form: row, col, mean, std, n, best, and the gain columns (NaN where no scratch baseline).
    cells: pd.DataFrame
    row_order: list[str]
    col_order: list[str]
    #: Row label → {column label or "Avg": published number}.
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    reference_label: str = "Reference"
    notes: list[str] = field(default_factory=list)

    @property
    def has_gains(self) -> bool:
        return bool(self.cells["scratch_mean"].notna().any())

    @property
    def caption(self) -> str:
        n = sorted(self.cells.loc[self.cells["col"] != AVG, "n"].astype(int).unique())
        n_text = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}–{n[-1]} (cells with fewer seeds say so)"
        text = (
            f"Target test accuracy (%) at the epoch chosen by rule '{self.rule.name}' ({self.rule.description}); "
            f"mean ± std over seeds, {n_text}. Rows: {', '.join(self.rows)}; columns: {', '.join(self.cols)}. Best per column in bold."
        )
        if self.rule.uses_target_labels:
            text = "ORACLE selection — uses target labels; an upper bound, not comparable to label-free results. " + text
        return text

    @property
    def gain_caption(self) -> str:
        return (
            f"Transfer gain over training from scratch (percentage points, rule '{self.rule.name}'): ours − scratch "
            "for the same configuration apart from freezing schedule and backbone weights. 'negative' marks negative "
            "transfer; 'beyond std' when |gain| exceeds the larger of the two seed stds."
        )

    # ----------------------------------------------------------- formatting
    def _text(self, cell: pd.Series) -> str:
        if pd.isna(cell["mean"]):
            return "–"
        if cell["col"] == AVG:
            return f"{cell['mean']:.2f}"
        text = f"{cell['mean']:.2f}" if cell["n"] < 2 else f"{cell['mean']:.2f} ± {cell['std']:.2f}"
        return text + (f" (n={int(cell['n'])})" if cell["n"] < self._max_n else "")

    @property
    def _max_n(self) -> int:
        return int(self.cells["n"].max())

    def grid(self, bold=lambda s: s, escape=lambda s: s) -> pd.DataFrame:
        """Formatted strings, rows × (columns, Avg, reference columns)."""
        index_name = escape(" / ".join(self.rows))
        out = pd.DataFrame(index=pd.Index([escape(r) for r in self.row_order], name=index_name))
        lookup = self.cells.set_index(["row", "col"])
        for col in self.col_order + [AVG]:
            values = []
            for row in self.row_order:
                cell = lookup.loc[(row, col)] if (row, col) in lookup.index else None
                text = escape(self._text(pd.Series({**cell, "col": col})) if cell is not None else "–")
                values.append(bold(text) if cell is not None and bool(cell["best"]) else text)
            out[escape(col)] = values
        for ref_col in self._reference_columns():
            key = AVG if ref_col == self.reference_label else ref_col[len(self.reference_label) + 1 :]
            out[escape(ref_col)] = [
                escape(f"{self.reference[r][key]:.2f}" if key in self.reference.get(r, {}) else "–") for r in self.row_order
            ]
        return out

    def _reference_columns(self) -> list[str]:
        keys = {k for r in self.row_order for k in self.reference.get(r, {})}
        return [f"{self.reference_label} {c}" for c in self.col_order if c in keys] + ([self.reference_label] if AVG in keys else [])

    def gain_grid(self, escape=lambda s: s) -> pd.DataFrame:
        index_name = escape(" / ".join(self.rows))
        out = pd.DataFrame(index=pd.Index([escape(r) for r in self.row_order], name=index_name))
        lookup = self.cells.set_index(["row", "col"])
        for col in self.col_order:
            values = []
            for row in self.row_order:
                cell = lookup.loc[(row, col)] if (row, col) in lookup.index else None
                if cell is None or pd.isna(cell["gain"]):
                    values.append(escape("–"))
                    continue
                text = f"{cell['gain']:+.2f}"
                if cell["negative_transfer"]:
                    spread = {True: "beyond std", False: "within std"}.get(cell["beyond_std"], "std n/a")
                    text += f" (negative, {spread})"
                values.append(escape(text))
            out[escape(col)] = values
        return out[(out != escape("–")).any(axis=1)]  # rows without a baseline anywhere (e.g. scratch itself) say nothing

    def to_markdown(self) -> str:
        parts = [f"**Rule `{self.rule.name}`.** {self.caption}", "", self.grid(bold=lambda s: f"**{s}**").to_markdown(disable_numparse=True)]
        if self.has_gains:
            parts += ["", f"**Transfer gain, rule `{self.rule.name}`.** {self.gain_caption}", "", self.gain_grid().to_markdown(disable_numparse=True)]
        if self.notes:
            parts += [""] + [f"> {note}" for note in self.notes]
        return "\n".join(parts) + "\n"

    def to_latex(self) -> str:
        """booktabs tables (\\usepackage{booktabs}); the caption names the rule."""
        blocks = [_latex_table(self.grid(bold=lambda s: f"\\textbf{{{s}}}", escape=latex_escape), self.caption, self.notes)]
        if self.has_gains:
            blocks.append(_latex_table(self.gain_grid(escape=latex_escape), self.gain_caption, []))
        return f"% tlbench report, rule: {self.rule.name}\n" + "\n".join(blocks)

    def to_frame(self) -> pd.DataFrame:
        """Numbers for machines: one line per cell (and per row's Avg), with the rule on every line."""
        frame = self.cells.assign(rule=self.rule.name, uses_target_labels=self.rule.uses_target_labels)
        frame["reference"] = [self.reference.get(r, {}).get(c, float("nan")) for r, c in zip(frame["row"], frame["col"])]
        frame = frame[["rule", "uses_target_labels", "row", "col"] + STAT_COLUMNS + ["best", "reference"] + GAIN_COLUMNS]
        frame = frame.astype({"n": "Int64", "scratch_n": "Int64"})
        return frame.round({c: 4 for c in ("mean", "std", "reference", "scratch_mean", "scratch_std", "gain")})

    def write(self, out_dir: str | Path, stem: str = "table") -> list[Path]:
        """`stem`.md, .csv and .tex in `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.tex"]
        paths[0].write_text(self.to_markdown())
        self.to_frame().to_csv(paths[1], index=False)
        paths[2].write_text(self.to_latex())
        return paths


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "→": r"$\to$", "–": "--", "—": "---", "−": "$-$", "|": r"$|$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_table(grid: pd.DataFrame, caption: str, notes: list[str]) -> str:
    header = " & ".join([grid.index.name or ""] + list(grid.columns)) + r" \\"
    body = [" & ".join([str(i)] + [str(v) for v in row]) + r" \\" for i, row in zip(grid.index, grid.itertuples(index=False))]
    lines = [
        r"\begin{table}[t]", r"\centering", f"\\caption{{{latex_escape(' '.join([caption] + notes))}}}",
        f"\\begin{{tabular}}{{l{'c' * len(grid.columns)}}}", r"\toprule", header, r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _mark_best(cells: pd.DataFrame) -> pd.Series:
    """Highest mean per column (ties at the printed precision all count as best)."""
    rounded = cells["mean"].round(2)
    return rounded.eq(rounded.groupby(cells["col"]).transform("max")) & rounded.notna()


def _normalize_reference(reference: Mapping[str, Any] | None) -> tuple[dict[str, dict[str, float]], str]:
    """{'dann': 76.66} (an Avg) or {'dann': {'digits': 71.2, 'Avg': 76.66}}, optionally wrapped as
    {'label': 'Ganin et al.', 'values': {...}}."""
    if not reference:
        return {}, "Reference"
    label = "Reference"
    if "values" in reference and isinstance(reference["values"], Mapping):
        label, reference = str(reference.get("label", label)), reference["values"]
    out: dict[str, dict[str, float]] = {}
    for row, value in reference.items():
        entries = value if isinstance(value, Mapping) else {AVG: value}
        try:
            out[str(row)] = {str(k): float(v) for k, v in entries.items()}
        except (TypeError, ValueError):
            raise ReportError(f"reference '{row}': expected a number or a mapping of column → number, got {value!r}") from None
    return out, label


def load_reference(path: str | Path) -> dict[str, Any]:
    """Published numbers from YAML or JSON (JSON is YAML)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"--reference {path}: cannot read ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise ReportError(f"--reference {path}: expected a mapping of row → number, e.g. {{dann: 76.66}}")
    return dict(data)


def paper_table(
    frame: pd.DataFrame,
    rows: str | Iterable[str] = "adapt.name",
    cols: str | Iterable[str] = "data.name",
    rule: str = DEFAULT_RULE,
    reference: Mapping[str, Any] | None = None,
) -> PaperTable:
    """The table of `rule`'s numbers from `collect`'s frame (other rules' rows are ignored)."""
    rule_obj = get_rule(rule)
    row_keys, col_keys = parse_keys(rows), parse_keys(cols)
    configs = per_config(frame, rule_obj)
    table = _gains(_restrict(frame, configs, row_keys + col_keys), configs)
    table["row"], table["col"] = labels(table, row_keys), labels(table, col_keys)
    row_order, col_order = sort_labels(table["row"]), sort_labels(table["col"])
    cells = table[["row", "col"] + STAT_COLUMNS + GAIN_COLUMNS]

    complete = cells.groupby("row")["col"].nunique() == len(col_order)
    avg = cells[cells["row"].isin(complete[complete].index)].groupby("row")["mean"].mean()
    avg_cells = pd.DataFrame({"row": avg.index, "col": AVG, "mean": avg.values, "std": float("nan"), "n": float("nan")})
    cells = pd.concat([cells, avg_cells], ignore_index=True) if len(avg_cells) else cells.copy()
    cells["best"] = _mark_best(cells)

    ref, ref_label = _normalize_reference(reference)
    notes = exclusion_notes(frame.attrs)
    if not complete.all():
        notes.append(f"{AVG} only for rows with every column ({int((~complete).sum())} row(s) incomplete).")
    set_aside = int(configs["is_scratch"].sum() - table["is_scratch"].sum())
    if set_aside:
        notes.append(f"{set_aside} from-scratch configuration(s) serve as baselines for the gain table, not as rows.")
    unmatched = sorted(set(ref) - set(row_order))
    if unmatched:
        notes.append(f"Reference numbers without runs of ours: {', '.join(unmatched)}.")
    return PaperTable(rule_obj, row_keys, col_keys, cells, row_order, col_order, ref, ref_label, notes)
