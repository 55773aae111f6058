"""What a reader gets beside the runs: learning curves and run costs (convergence evidence), and the
sweep's seed-averaged table with paired gains printed at the end of a multirun."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import tiny_run

from tlbench.hydra_callbacks import seed_averaged_table
from tlbench.report.curves import write_curves
from tlbench.report.sources import StoreSource
from tlbench.train import train

SWEEP = "/sweeps/test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four tiny runs: source_only and dann × seeds 0, 1, tagged as one sweep."""
    tmp = tmp_path_factory.mktemp("curves")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    for adapt in ("source_only", "dann"):
        for seed in (0, 1):
            train(tiny_run(tmp, uri, [f"adapt={adapt}", f"seed={seed}", "trainer.steps_per_epoch=3"]), extra_tags={"sweep_dir": SWEEP})
    return tmp, uri


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_curves_have_one_point_per_epoch_per_configuration_and_costs(store):
    tmp, uri = store
    paths = write_curves(StoreSource(uri, "tlbench"), "adapt.name,batch_composition", tmp / "out")
    assert sorted(p.name for p in paths) == ["cost.md", "curves.csv", "curves.png"]
    curves = pd.read_csv(tmp / "out" / "curves.csv")
    source_val = curves[curves["metric"] == "val/source_acc"]
    # 2 epochs × 3 steps: points at the end of each epoch, for both configurations, over both seeds
    assert sorted(source_val["label"].unique()) == ["dann / joint", "source_only / joint"]
    assert sorted(source_val["step"].unique()) == [2, 5]
    assert set(source_val["count"]) == {2}
    # only DANN has a discriminator: its accuracy and λ are curves, source_only has none
    assert set(curves.loc[curves["metric"] == "train_epoch/domain_acc", "label"]) == {"dann / joint"}
    lam = curves[curves["metric"] == "train_epoch/dann_lambda"].sort_values("step")["mean"].tolist()
    assert lam == sorted(lam) and 0 < lam[0] < lam[-1] <= 1  # the ramp grows
    cost = (tmp / "out" / "cost.md").read_text()
    assert "| dann / joint | 2 |" in cost and "Total: 4 runs" in cost
    assert "| dann / joint | 6 |" in cost  # plateau table: 6 steps, the last quarter compared


def test_sweep_summary_averages_seeds_and_pairs_the_gain_over_source_only(store):
    _, uri = store
    text = seed_averaged_table(uri, "tlbench", (f"tags.sweep_dir = '{SWEEP}'",), "source_val")
    assert "n = 2" in text and "| dann " in text and "| source_only " in text
    assert "Gain over source-only" in text and "n=2)" in text
    assert seed_averaged_table(uri, "tlbench", ("tags.sweep_dir = '/sweeps/other'",), "source_val") is None  # nothing recorded there
