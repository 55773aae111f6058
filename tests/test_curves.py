"""Learning curves and run costs of recorded runs (the convergence evidence beside every results table)."""

from __future__ import annotations

import pandas as pd

from conftest import tiny_run
from tlbench.report.curves import write_curves
from tlbench.train import train


def test_curves_have_one_point_per_epoch_per_configuration_and_costs(tmp_path, mlflow_uri):
    for adapt in ("source_only", "dann"):
        train(tiny_run(tmp_path, mlflow_uri, [f"adapt={adapt}", "trainer.steps_per_epoch=3"]))
    paths = write_curves(mlflow_uri, "tlbench", "adapt.name,batch_composition", tmp_path / "out")
    assert sorted(p.name for p in paths) == ["cost.md", "curves.csv", "curves.png"]
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    source_val = curves[curves["metric"] == "val/source_acc"]
    # 2 epochs × 3 steps: points at the end of each epoch, for both configurations, labelled with the composition
    assert sorted(source_val["label"].unique()) == ["dann / joint", "source_only / joint"]
    assert sorted(source_val["step"].unique()) == [2, 5]
    # only DANN has a discriminator: its accuracy and λ are curves, source_only has none
    assert set(curves.loc[curves["metric"] == "train_epoch/domain_acc", "label"]) == {"dann / joint"}
    lam = curves[curves["metric"] == "train_epoch/dann_lambda"].sort_values("step")["mean"].tolist()
    assert lam == sorted(lam) and 0 < lam[0] < lam[-1] <= 1  # the ramp grows
    cost = (tmp_path / "out" / "cost.md").read_text()
    assert "| dann / joint | 1 |" in cost and "Total: 2 runs" in cost
