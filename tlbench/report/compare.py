"""Gain over a baseline, paired across seeds: the one place that decides whether a difference is noise.

A configuration is compared with its baseline configuration (training from scratch, or source-only
training for domain adaptation): the configuration that is identical apart from the compared axis
(`freeze.*` and `backbone.weights` for scratch, `adapt.*` for source-only) and sits at the baseline's
value on it. Runs are paired on their seed and only on their seed: a seed that one side lacks is left
out, never matched with another seed. The gain is the mean of the per-seed differences (percentage
points); a paired t-test across seeds (two-sided, α = 0.05) says whether it stands out from seed
noise. Fewer than two pairs: the gain is shown, no test is made.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .collection import BASELINE_FREE, NOT_CONFIG, RESULT_COLUMNS, SCRATCH, _fingerprint, _under
from .errors import ReportError

ALPHA = 0.05
#: Per-baseline columns of a table's long form, each prefixed with the baseline's name: the baseline's
#: own mean/std/n over all its seeds, then the paired comparison.
STATS = ("mean", "std", "n", "gain", "gain_std", "p_value", "p_holm", "n_pairs", "verdict")


@dataclass(frozen=True)
class Baseline:
    """What a configuration is compared against: `key` = `value`, everything outside `axis` equal."""

    name: str
    key: str
    value: str
    #: Config-key prefixes in which a configuration may differ from its baseline.
    axis: tuple[str, ...]
    title: str

    def columns(self) -> list[str]:
        return [f"{self.name}_{s}" for s in STATS]

    def is_baseline(self, configs: pd.DataFrame) -> pd.Series:
        if self.key not in configs.columns:
            return pd.Series(False, index=configs.index)
        return configs[self.key].astype(str) == self.value


SOURCE_ONLY = Baseline("source_only", "adapt.name", "source_only", ("adapt",), "Gain over source-only training")
SCRATCH_BASELINE = Baseline("scratch", "freeze.name", SCRATCH, BASELINE_FREE, "Transfer gain over training from scratch")
BASELINES = (SOURCE_ONLY, SCRATCH_BASELINE)


def config_keys(frame: pd.DataFrame) -> list[str]:
    """The keys that tell configurations apart: `collect`'s list, else every param column but the seed."""
    recorded = frame.attrs.get("config_keys")
    if recorded:
        return list(recorded)
    return [c for c in frame.columns if c not in RESULT_COLUMNS and not _under(c, NOT_CONFIG)]


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def verdict(gain: float, p_value: float, n_pairs: int, p_holm: float | None = None) -> str:
    """'better (p=0.01, n=3)', 'worse (…)', 'within noise (…)', 'no test (n=1)' or 'no paired seeds'. With
    `p_holm` (the p-value adjusted for the table's family of comparisons) the word follows it:
    'within noise (p=0.03, Holm p=0.12, n=5)'."""
    if n_pairs == 0:
        return "no paired seeds"
    if n_pairs < 2 or math.isnan(p_value):
        return f"no test (n={n_pairs})"
    decisive = p_value if p_holm is None or math.isnan(p_holm) else p_holm
    word = ("better" if gain > 0 else "worse") if decisive < ALPHA else "within noise"
    holm_text = "" if p_holm is None or math.isnan(p_holm) else f", Holm {format_p(p_holm)}"
    return f"{word} ({format_p(p_value)}{holm_text}, n={n_pairs})"


def adjust_family(table: pd.DataFrame, baseline: Baseline) -> pd.DataFrame:
    """Every comparison with `baseline` in one table is one family: Holm-adjust their p-values and give each
    verdict from its adjusted p-value (a table of many cells would otherwise find 'better' by chance)."""
    p = baseline.name
    if f"{p}_p_value" not in table:
        return table
    raw = pd.to_numeric(table[f"{p}_p_value"], errors="coerce").tolist()
    table[f"{p}_p_holm"] = holm(raw)
    tested = table[f"{p}_p_value"].notna() & table[f"{p}_gain"].notna()
    table.loc[tested, f"{p}_verdict"] = [
        verdict(float(row[f"{p}_gain"]), float(row[f"{p}_p_value"]), int(row[f"{p}_n_pairs"]), float(row[f"{p}_p_holm"])) for _, row in table[tested].iterrows()
    ]
    return table


def _by_seed(values: pd.Series, what: str) -> pd.Series:
    values = values.dropna()
    values = values[values.index.notna()]
    values.index = values.index.astype(str)
    if values.index.has_duplicates:
        raise ReportError(f"{what}: seed(s) {', '.join(sorted(set(values.index[values.index.duplicated()])))} recorded twice")
    return values.astype(float)


def paired_test(ours: pd.Series, base: pd.Series, what: str = "configuration") -> dict:
    """Compare two seed → accuracy (%) series on the seeds they share.

    Returns gain (mean difference), gain_std (std of the differences), p_value (paired t-test, two-sided;
    NaN below 2 pairs), n_pairs and verdict. Differences without any spread are exact: p = 0 for a
    non-zero gain, 1 for none (the t statistic is ±∞ or undefined there)."""
    ours, base = _by_seed(ours, what), _by_seed(base, f"baseline of {what}")
    seeds = ours.index.intersection(base.index)
    diff = ours[seeds].to_numpy() - base[seeds].to_numpy()
    n = len(diff)
    gain = float(diff.mean()) if n else math.nan
    gain_std = float(diff.std(ddof=1)) if n >= 2 else math.nan
    p_value = math.nan
    if n >= 2:
        if np.ptp(diff) <= 1e-9 * max(1.0, abs(gain)):
            p_value = 0.0 if abs(gain) > 1e-9 else 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p_value = float(stats.ttest_rel(ours[seeds].to_numpy(), base[seeds].to_numpy()).pvalue)
    return {"gain": gain, "gain_std": gain_std, "p_value": p_value, "n_pairs": n, "verdict": verdict(gain, p_value, n)}


def compare(runs: pd.DataFrame, configs: pd.DataFrame, baseline: Baseline, keys: list[str]) -> pd.DataFrame:
    """`baseline.columns()` for every configuration in `configs` (index config_id); NaN where there is none.

    `runs`: one row per run of one rule with `config_id`, `seed` and `acc` (%); `configs`: one row per
    configuration with `config_id`, `mean`, `std`, `n` and its config keys. A baseline configuration has
    no comparison with itself; two baseline candidates for one configuration give no gain and say so."""
    out = pd.DataFrame(index=pd.Index(configs["config_id"], name="config_id"), columns=baseline.columns(), dtype=object)
    is_base = baseline.is_baseline(configs)
    if not is_base.any():
        return _typed(out, baseline)
    shared = [k for k in keys if k in configs.columns and not _under(k, baseline.axis)]
    match = configs.apply(_fingerprint, axis=1, keys=shared) if len(configs) else pd.Series(dtype=str)
    candidates = configs[is_base].groupby(match[is_base])["config_id"].agg(list)
    seeds = runs["seed"] if "seed" in runs.columns else pd.Series(np.nan, index=runs.index)
    by_config = {cid: group.set_axis(seeds[group.index]) for cid, group in runs.groupby("config_id")["acc"]}
    stats_of = configs.set_index("config_id")[["mean", "std", "n"]]
    p = baseline.name
    for i, config in configs[~is_base].iterrows():
        found = candidates.get(match[i], [])
        if len(found) != 1:
            if found:
                out.loc[config["config_id"], f"{p}_verdict"] = f"no single {p} baseline ({len(found)} candidates)"
            continue
        base_id, cid = found[0], config["config_id"]
        out.loc[cid, [f"{p}_mean", f"{p}_std", f"{p}_n"]] = stats_of.loc[base_id].to_numpy()
        result = paired_test(by_config.get(cid, pd.Series(dtype=float)), by_config.get(base_id, pd.Series(dtype=float)), what=str(cid))
        out.loc[cid, [f"{p}_{k}" for k in result]] = list(result.values())
    return _typed(out, baseline)


def _typed(out: pd.DataFrame, baseline: Baseline) -> pd.DataFrame:
    p = baseline.name
    numeric = [f"{p}_{s}" for s in STATS if s not in ("n", "n_pairs", "verdict")]
    out[numeric] = out[numeric].astype(float)
    out[[f"{p}_n", f"{p}_n_pairs"]] = out[[f"{p}_n", f"{p}_n_pairs"]].astype("Int64")
    return out


def t_interval(values: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t confidence interval of the mean of `values` (NaN below two)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not part of the family and
    stay NaN): sorted ascending, the k-th (1-based) becomes max over j ≤ k of min(1, (m − j + 1)·p_(j))."""
    present = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    m = len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
