"""Paper tables from the tidy frame of `collect`: one selection rule per table, mean ± std over seeds.

A table cell is exactly one configuration aggregated over its seeds; if two configurations land in the
same cell (say two learning rates), that is an error naming the keys that differ, never a silent average.
From-scratch runs (`freeze.name=scratch`) are baselines: unless the table's keys include `freeze.name`
they are not rows. Every configuration with a matching scratch or source-only configuration gets a gain
over it, paired across seeds with a test of whether it is noise (see `compare`), shown in its own table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..errors import one_line
from .collection import RESULT_COLUMNS, exclusion_notes
from .compare import ALPHA, BASELINES, SCRATCH_BASELINE, Baseline, adjust_family, compare, config_keys
from .errors import ReportError
from .selection import DEFAULT_RULE, Rule, get_rule

AVG = "Avg"
STAT_COLUMNS = ["mean", "std", "n"]
#: Per baseline (source_only_*, scratch_*): its mean/std/n, and gain, gain_std, p_value, n_pairs, verdict.
GAIN_COLUMNS = [c for b in BASELINES for c in b.columns()] + ["negative_transfer"]


def parse_keys(keys: str | Iterable[str]) -> list[str]:
    """'adapt.name,freeze.name' or a list → ['adapt.name', 'freeze.name']."""
    parts = keys.split(",") if isinstance(keys, str) else list(keys)
    return [k.strip() for k in parts if k.strip()]


def as_text(values: pd.Series) -> pd.Series:
    """Values as display text, "–" where a key was not recorded (e.g. a method's own hyperparameter in
    another method's run); pandas' astype(str) would keep those as missing."""
    return values.astype(object).where(values.notna(), "–").map(str)


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


def rule_runs(frame: pd.DataFrame, rule: str | Rule) -> pd.DataFrame:
    """The runs with a result under `rule`, with `acc` = target test accuracy in percent."""
    rule = rule if isinstance(rule, Rule) else get_rule(rule)
    chosen = frame[(frame["rule"] == rule.name) & frame["target_acc"].notna()]
    if chosen.empty:
        raise ReportError(f"no finished runs with a '{rule.name}' result to tabulate")
    return chosen.assign(acc=chosen["target_acc"] * 100.0)


def per_config(frame: pd.DataFrame, rule: str | Rule) -> pd.DataFrame:
    """One row per configuration under `rule`: mean/std/n of target accuracy over seeds, in percent."""
    grouped = rule_runs(frame, rule).groupby("config_id", sort=False)
    stats = grouped["acc"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    per_run = ["acc", "target_acc", "source_acc", "run_id", "run_name", "start_time"]
    first = grouped.first().drop(columns=per_run, errors="ignore")
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
    configs = configs.assign(**{f"label:{k}": as_text(configs[k]) for k in keys})
    _check_one_config_per_cell(configs, keys, config_keys(frame))
    return configs.reset_index(drop=True)


def _check_one_config_per_cell(configs: pd.DataFrame, keys: list[str], config_keys: list[str]) -> None:
    for values, group in configs.groupby([f"label:{k}" for k in keys], sort=True):
        if len(group) < 2:
            continue
        differing = [
            f"{k} ({' | '.join(sorted(as_text(group[k]).unique()))})"
            for k in config_keys
            if k in group.columns and k not in keys and as_text(group[k]).nunique() > 1
        ]
        cell = " / ".join(values if isinstance(values, tuple) else (values,))
        raise ReportError(
            f"cell '{cell}' mixes {len(group)} configurations that differ in {', '.join(differing) or 'unrecorded keys'}; "
            "add the key to --rows/--cols or narrow the runs with --filter"
        )


def _gains(table: pd.DataFrame, configs: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Attach every baseline's comparison (`compare`) to the table's configurations, and
    `negative_transfer` = the gain over scratch is below zero (whether that is noise: `scratch_verdict`)."""
    for baseline in BASELINES:
        table = adjust_family(table.join(compare(runs, configs, baseline, keys), on="config_id"), baseline)
    gain = table[f"{SCRATCH_BASELINE.name}_gain"]
    table["negative_transfer"] = (gain < 0).astype(object).where(gain.notna())
    return table


@dataclass
class PaperTable:
    """Rows × columns of one rule's results, plus paired gains over baselines and published reference numbers."""

    rule: Rule
    rows: list[str]
    cols: list[str]
    #: Long form: row, col, mean, std, n, best, and the gain columns per baseline (NaN where there is none).
    cells: pd.DataFrame
    row_order: list[str]
    col_order: list[str]
    #: Row label → {column label or "Avg": published number}.
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    reference_label: str = "Reference"
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> list[Baseline]:
        """The baselines some cell of this table is compared with (each gets its own gain table)."""
        return [b for b in BASELINES if self.cells[f"{b.name}_verdict"].notna().any()]

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

    def gain_caption(self, baseline: Baseline) -> str:
        """What the gain table against `baseline` shows, without its title (markdown bolds the title, LaTeX prefixes it)."""
        axis = ", ".join(a if "." in a else f"{a}.*" for a in baseline.axis)
        text = (
            f"Percentage points, numbers selected by rule '{self.rule.name}' ({self.rule.description}): mean over seeds "
            f"of ours − {baseline.value}, each run against the {baseline.value} run of the same seed and the same "
            f"configuration apart from {axis}; ± std of these differences. Verdict: paired t-test across seeds, "
            f"two-sided, its p-value Holm-adjusted over every comparison in this table (the family), significance "
            f"level {ALPHA:g}: 'better'/'worse' when the Holm p < {ALPHA:g}, else 'within noise'; "
            "n = paired seeds (a seed without a partner run is left out, never paired with another seed); one pair: no test."
        )
        if baseline is SCRATCH_BASELINE:
            text += " A gain below zero is negative transfer, real only where the verdict says 'worse'."
        return text

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
            out[escape(ref_col)] = [escape(f"{self.reference[r][key]:.2f}" if key in self.reference.get(r, {}) else "–") for r in self.row_order]
        return out

    def _reference_columns(self) -> list[str]:
        keys = {k for r in self.row_order for k in self.reference.get(r, {})}
        return [f"{self.reference_label} {c}" for c in self.col_order if c in keys] + ([self.reference_label] if AVG in keys else [])

    def gain_grid(self, baseline: Baseline = SCRATCH_BASELINE, escape=lambda s: s) -> pd.DataFrame:
        """Gain ± std and verdict against `baseline` per cell; rows without any (the baseline itself) are left out."""
        index_name = escape(" / ".join(self.rows))
        out = pd.DataFrame(index=pd.Index([escape(r) for r in self.row_order], name=index_name))
        lookup = self.cells.set_index(["row", "col"])
        p = baseline.name
        for col in self.col_order:
            values = []
            for row in self.row_order:
                cell = lookup.loc[(row, col)] if (row, col) in lookup.index else None
                if cell is None or pd.isna(cell[f"{p}_verdict"]):
                    values.append(escape("–"))
                elif pd.isna(cell[f"{p}_gain"]):
                    values.append(escape(cell[f"{p}_verdict"]))
                else:
                    spread = "" if pd.isna(cell[f"{p}_gain_std"]) else f" ± {cell[f'{p}_gain_std']:.2f}"
                    values.append(escape(f"{cell[f'{p}_gain']:+.2f}{spread}, {cell[f'{p}_verdict']}"))
            out[escape(col)] = values
        return out[(out != escape("–")).any(axis=1)]

    def to_markdown(self) -> str:
        parts = [f"**Rule `{self.rule.name}`.** {self.caption}", "", self.grid(bold=lambda s: f"**{s}**").to_markdown(disable_numparse=True)]
        for baseline in self.compared:
            parts += [
                "",
                f"**{baseline.title} (`{baseline.value}`), rule `{self.rule.name}`.** {self.gain_caption(baseline)}",
                "",
                self.gain_grid(baseline).to_markdown(disable_numparse=True),
            ]
        if self.notes:
            parts += [""] + [f"> {note}" for note in self.notes]
        return "\n".join(parts) + "\n"

    def to_latex(self) -> str:
        """booktabs tables (\\usepackage{booktabs}); the caption names the rule."""
        blocks = [_latex_table(self.grid(bold=lambda s: f"\\textbf{{{s}}}", escape=latex_escape), self.caption, self.notes)]
        for baseline in self.compared:
            caption = f"{baseline.title}, rule '{self.rule.name}'. {self.gain_caption(baseline)}"
            blocks.append(_latex_table(self.gain_grid(baseline, escape=latex_escape), caption, []))
        return f"% tlbench report, rule: {self.rule.name}\n" + "\n".join(blocks)

    def to_frame(self) -> pd.DataFrame:
        """Numbers for machines: one line per cell (and per row's Avg), with the rule on every line and, per
        baseline, `<baseline>_mean/std/n` and the paired `<baseline>_gain/gain_std/p_value/n_pairs/verdict`."""
        frame = self.cells.assign(rule=self.rule.name, uses_target_labels=self.rule.uses_target_labels)
        frame["reference"] = [self.reference.get(r, {}).get(c, float("nan")) for r, c in zip(frame["row"], frame["col"])]
        frame = frame[["rule", "uses_target_labels", "row", "col"] + STAT_COLUMNS + ["best", "reference"] + GAIN_COLUMNS]
        frame = frame.astype({"n": "Int64", **{f"{b.name}_{c}": "Int64" for b in BASELINES for c in ("n", "n_pairs")}})
        points = ["mean", "std", "reference"] + [f"{b.name}_{c}" for b in BASELINES for c in ("mean", "std", "gain", "gain_std")]
        return frame.round({**{c: 4 for c in points}, **{f"{b.name}_p_value": 6 for b in BASELINES}})

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
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "→": r"$\to$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "|": r"$|$",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_table(grid: pd.DataFrame, caption: str, notes: list[str]) -> str:
    header = " & ".join([grid.index.name or ""] + list(grid.columns)) + r" \\"
    body = [" & ".join([str(i)] + [str(v) for v in row]) + r" \\" for i, row in zip(grid.index, grid.itertuples(index=False))]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{latex_escape(' '.join([caption] + notes))}}}",
        f"\\begin{{tabular}}{{l{'c' * len(grid.columns)}}}",
        r"\toprule",
        header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
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
        raise ReportError(f"--reference {path}: cannot read ({one_line(exc)})") from None
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
    runs = rule_runs(frame, rule_obj)
    configs = per_config(runs, rule_obj)
    table = _gains(_restrict(frame, configs, row_keys + col_keys), configs, runs, config_keys(frame))
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
        notes.append(f"{set_aside} from-scratch configuration(s) serve as baselines for the gain over scratch, not as rows.")
    unmatched = sorted(set(ref) - set(row_order))
    if unmatched:
        notes.append(f"Reference numbers without runs of ours: {', '.join(unmatched)}.")
    return PaperTable(rule_obj, row_keys, col_keys, cells, row_order, col_order, ref, ref_label, notes)


@dataclass
class RunMetricTable:
    """A run-level metric (its last value per run) as rows × columns: mean ± std over seeds and n."""

    metric: str
    rule: str
    cells: pd.DataFrame
    notes: list[str]

    def caption(self) -> str:
        return f"**`{self.metric}`**, measured once per run on the model chosen by rule '{self.rule}'; mean ± std over seeds (n)." + "".join(
            f" {n}" for n in self.notes
        )

    def to_markdown(self) -> str:
        grid = self.cells.pivot(index="row", columns="col", values="text").fillna("–")
        return f"{self.caption()}\n\n{grid.to_markdown()}\n"

    def write(self, out: Path, stem: str) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(self.to_markdown())
        self.cells.drop(columns="text").to_csv(out / f"{stem}.csv", index=False, lineterminator="\n")
        return [out / f"{stem}.md", out / f"{stem}.csv"]


def run_metric_table(frame: pd.DataFrame, metric: str, rows: str | Iterable[str], cols: str | Iterable[str], rule: str = DEFAULT_RULE) -> RunMetricTable:
    """`metric` (a `run:<metric>` column of `collect`'s frame) per cell of the rows × columns layout."""
    column = f"run:{metric}"
    if column not in frame.columns:
        raise ReportError(f"--metric {metric}: not collected; pass it to collect(run_metrics=...)")
    row_keys, col_keys = parse_keys(rows), parse_keys(cols)
    runs = rule_runs(frame, rule)
    runs = runs.assign(row=labels(runs.assign(**{f"label:{k}": as_text(runs[k]) for k in row_keys}), row_keys))
    runs = runs.assign(col=labels(runs.assign(**{f"label:{k}": as_text(runs[k]) for k in col_keys}), col_keys))
    measured = runs[runs[column].notna()]
    missing = len(runs) - len(measured)
    cells = measured.groupby(["row", "col"])[column].agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    cells["text"] = [f"{m:.3f} ± {0.0 if pd.isna(s) else s:.3f} ({n})" for m, s, n in zip(cells["mean"], cells["std"], cells["n"])]
    notes = [f"{missing} run(s) did not record it (tracking.analysis=false)."] if missing else []
    return RunMetricTable(metric, rule, cells.round({"mean": 6, "std": 6}), notes)
