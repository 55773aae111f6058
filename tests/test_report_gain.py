"""Gains over source-only / scratch, paired across seeds, on tidy frames built by hand (no training, no MLflow).

The p-values are checked against the closed form of Student's t with 2 degrees of freedom (3 pairs):
two-sided p = 1 − |t| / √(t² + 2), so the test does not lean on the implementation it checks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tlbench.report import ReportError, paper_table
from tlbench.report.compare import ALPHA, paired_test

KEYS = ["adapt.name", "adapt.trade_off", "freeze.name", "backbone.weights", "data.name", "optim.lr", "batch_composition"]
DEFAULT = {
    "adapt.name": "source_only",
    "adapt.trade_off": "None",
    "freeze.name": "full",
    "backbone.weights": "imagenet",
    "data.name": "digits",
    "optim.lr": "0.01",
    "batch_composition": "joint",
}
DANN = {"adapt.name": "dann", "adapt.trade_off": "1.0"}


def tidy(*configs: tuple[dict, dict]) -> pd.DataFrame:
    """(config overrides, {seed: target accuracy %}) pairs → `collect`'s frame for rule source_val."""
    rows = []
    for overrides, by_seed in configs:
        config = {**DEFAULT, **overrides}
        for seed, acc in by_seed.items():
            rows.append(
                {
                    **config,
                    "seed": str(seed),
                    "rule": "source_val",
                    "target_acc": acc / 100,
                    "config_id": "|".join(config[k] for k in KEYS),
                    "is_scratch": config["freeze.name"] == "scratch",
                }
            )
    frame = pd.DataFrame(rows)
    frame.attrs["config_keys"] = KEYS
    return frame


def cell(table, row, col="digits"):
    return table.cells.set_index(["row", "col"]).loc[(row, col)]


def t_two_sided_df2(diff: np.ndarray) -> float:
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(len(diff)))
    return 1 - abs(t) / math.sqrt(t * t + 2)


def test_paired_gain_and_p_value_match_a_hand_computation():
    source_only, dann = {0: 60.0, 1: 66.0, 2: 71.0}, {0: 63.5, 1: 67.0, 2: 76.0}
    table = paper_table(tidy((DEFAULT, source_only), (DANN, dann)))
    diff = np.array([dann[s] - source_only[s] for s in (0, 1, 2)])
    got = cell(table, "dann")
    assert got["source_only_gain"] == pytest.approx(diff.mean())
    assert got["source_only_gain_std"] == pytest.approx(diff.std(ddof=1))
    assert got["source_only_p_value"] == pytest.approx(t_two_sided_df2(diff), rel=1e-9)
    assert got["source_only_n_pairs"] == 3 and got["source_only_mean"] == pytest.approx(np.mean(list(source_only.values())))
    expected = "better" if t_two_sided_df2(diff) < ALPHA else "within noise"
    assert got["source_only_verdict"].startswith(f"{expected} (p=")
    assert pd.isna(cell(table, "source_only")["source_only_verdict"])  # the baseline is not compared with itself


def test_paired_test_edge_cases():
    ours = pd.Series([70.0, 71.0, 72.0], index=["0", "1", "2"])
    assert paired_test(ours, ours - 2.0)["verdict"] == "better (p<0.001, n=3)"  # no spread at all: exact
    same = paired_test(ours, ours)
    assert (same["gain"], same["p_value"]) == (0.0, 1.0) and same["verdict"].startswith("within noise")
    with pytest.raises(ReportError, match="seed\\(s\\) 1 recorded twice"):
        paired_test(pd.Series([70.0, 71.0], index=["1", "1"]), ours)


def test_mismatched_seeds_are_never_paired():
    frame = tidy(
        (DEFAULT, {1: 60.0, 2: 64.0, 5: 90.0}),
        (DANN, {0: 50.0, 1: 63.0, 2: 65.0}),  # shares seeds 1 and 2 only
        ({"data.name": "office"}, {0: 40.0, 1: 42.0}),
        ({**DANN, "data.name": "office"}, {3: 45.0, 4: 47.0}),  # no seed in common
    )
    table = paper_table(frame)
    shared = cell(table, "dann")
    assert shared["source_only_n_pairs"] == 2
    assert shared["source_only_gain"] == pytest.approx(np.mean([63.0 - 60.0, 65.0 - 64.0]))
    assert shared["source_only_gain"] != pytest.approx(shared["mean"] - shared["source_only_mean"])  # not mean − mean
    disjoint = cell(table, "dann", "office")
    assert disjoint["source_only_n_pairs"] == 0 and pd.isna(disjoint["source_only_gain"])
    assert disjoint["source_only_verdict"] == "no paired seeds" and disjoint["source_only_mean"] == pytest.approx(41.0)
    from tlbench.report.compare import SOURCE_ONLY

    grid = table.gain_grid(SOURCE_ONLY)
    assert grid.loc["dann", "office"] == "no paired seeds" and grid.loc["dann", "digits"].endswith("n=2)")


def test_one_pair_gives_a_gain_but_no_test():
    table = paper_table(tidy((DEFAULT, {0: 60.0, 1: 61.0}), (DANN, {1: 63.0, 7: 99.0})))
    got = cell(table, "dann")
    assert got["source_only_gain"] == pytest.approx(2.0) and got["source_only_n_pairs"] == 1
    assert pd.isna(got["source_only_p_value"]) and pd.isna(got["source_only_gain_std"])
    assert got["source_only_verdict"] == "no test (n=1)"
    assert "| dann         | +2.00, no test (n=1) |" in table.to_markdown()


def test_small_consistent_gain_is_significant_and_large_noisy_gain_is_noise():
    source_only = {0: 60.0, 1: 65.0, 2: 70.0}
    small = {s: a + d for (s, a), d in zip(source_only.items(), (1.0, 1.1, 0.9))}
    noisy = {s: a + d for (s, a), d in zip(source_only.items(), (20.0, -5.0, 15.0))}
    table = paper_table(tidy((DEFAULT, source_only), ({"adapt.name": "mcc"}, small), ({"adapt.name": "cdan", "adapt.trade_off": "1.0"}, noisy)))
    small_cell, noisy_cell = cell(table, "mcc"), cell(table, "cdan")
    assert small_cell["source_only_gain"] < noisy_cell["source_only_gain"]
    assert small_cell["source_only_p_value"] < ALPHA < noisy_cell["source_only_p_value"]
    assert small_cell["source_only_verdict"].startswith("better (p=")
    assert noisy_cell["source_only_verdict"].startswith("within noise (p=")
    markdown = table.to_markdown()
    assert "| mcc          | +1.00 ± 0.10, better (p=" in markdown and "| cdan         | +10.00 ± 13.23, within noise (p=" in markdown


def test_a_baseline_must_match_everything_but_the_compared_axis():
    frame = tidy(
        (DEFAULT, {0: 60.0, 1: 62.0, 2: 64.0}),
        ({**DANN, "optim.lr": "0.1"}, {0: 70.0, 1: 71.0, 2: 73.0}),  # no source_only at this lr
        ({**DANN, "batch_composition": "separate"}, {0: 70.0, 1: 71.0, 2: 73.0}),  # batch composition differs
        ({**DANN, "adapt.trade_off": "0.3"}, {0: 61.0, 1: 63.5, 2: 64.0}),  # adapt.* is the compared axis
    )
    table = paper_table(frame, rows="adapt.name,adapt.trade_off,optim.lr,batch_composition")
    assert pd.isna(cell(table, "dann / 1.0 / 0.1 / joint")["source_only_verdict"])
    assert pd.isna(cell(table, "dann / 1.0 / 0.01 / separate")["source_only_verdict"])
    assert cell(table, "dann / 0.3 / 0.01 / joint")["source_only_gain"] == pytest.approx(np.mean([1.0, 1.5, 0.0]))


def test_scratch_gain_uses_the_same_paired_test_and_says_when_the_baseline_is_ambiguous():
    dann, dann_scratch = {0: 70.0, 1: 74.0, 2: 71.0}, {0: 61.0, 2: 60.0, 3: 58.0}
    scratch = {"freeze.name": "scratch", "backbone.weights": "none"}
    frame = tidy(
        (DEFAULT, {0: 65.0, 1: 66.0, 2: 64.0}),
        (DANN, dann),
        ({**DANN, **scratch}, dann_scratch),
        ({"data.name": "office"}, {0: 50.0, 1: 52.0}),
        ({**scratch, "data.name": "office"}, {0: 40.0, 1: 41.0}),
        ({**scratch, "data.name": "office", "backbone.weights": "random"}, {0: 41.0, 1: 42.0}),
    )
    table = paper_table(frame)
    seeds = lambda d: pd.Series(d).set_axis([str(s) for s in d])  # noqa: E731
    expected = paired_test(seeds(dann), seeds(dann_scratch))
    got = cell(table, "dann")
    assert got["scratch_n_pairs"] == expected["n_pairs"] == 2  # seeds 0 and 2
    assert (got["scratch_gain"], got["scratch_p_value"]) == (pytest.approx(expected["gain"]), pytest.approx(expected["p_value"]))
    # the only scratch comparison in the table: its Holm p is the raw p, and the verdict names both
    assert got["scratch_p_holm"] == pytest.approx(expected["p_value"]) and not got["negative_transfer"]
    assert got["scratch_verdict"] == expected["verdict"].replace(", n=", f", Holm p={expected['p_value']:.2g}, n=")
    assert cell(table, "source_only", "office")["scratch_verdict"] == "no single scratch baseline (2 candidates)"
    markdown = table.to_markdown()
    assert "**Gain over source-only training (`source_only`), rule `source_val`.**" in markdown
    assert "**Transfer gain over training from scratch (`scratch`), rule `source_val`.**" in markdown


def test_csv_and_captions_carry_the_test(tmp_path):
    frame = tidy((DEFAULT, {0: 60.0, 1: 65.0, 2: 70.0}), (DANN, {0: 62.0, 1: 66.5, 2: 73.0}))
    table = paper_table(frame)
    md, csv, tex = table.write(tmp_path)
    lines = pd.read_csv(csv).set_index(["row", "col"])
    for stat in ("gain", "gain_std", "p_value", "n_pairs", "verdict"):
        assert f"source_only_{stat}" in lines.columns and f"scratch_{stat}" in lines.columns
    line, got = lines.loc[("dann", "digits")], cell(table, "dann")
    assert line["source_only_gain"] == pytest.approx(got["source_only_gain"], abs=1e-4)
    assert line["source_only_p_value"] == pytest.approx(got["source_only_p_value"], abs=1e-6)
    assert (line["source_only_n_pairs"], line["source_only_verdict"]) == (3, got["source_only_verdict"])
    caption = table.gain_caption(table.compared[0])
    for phrase in (
        "paired t-test across seeds",
        "two-sided",
        f"significance level {ALPHA:g}",
        "rule 'source_val'",
        "max source validation accuracy",
        "never paired with another seed",
    ):
        assert phrase in caption and phrase in md.read_text(), phrase
    assert "paired t-test" in tex.read_text() and "source-only" in tex.read_text()
