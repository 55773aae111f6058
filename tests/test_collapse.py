"""A run whose selected network predicts one class for nearly every test image is flagged as collapsed:
a metric per test split, a tag, a warning line and the run's description; a healthy run is not."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_run
from mlflow.tracking import MlflowClient

from tlbench.collapse import COLLAPSED_TAG, collapse_of
from tlbench.train import train


def test_one_predicted_class_on_balanced_labels_is_a_collapse():
    counts = torch.zeros(4, 4)
    counts[:, 2] = 25  # every true class predicted as class 2
    found = collapse_of({"test/source": counts})
    assert found.metrics == {"test/source_top_prediction_share": 1.0}
    assert found.collapsed == [("test/source", 2, 1.0)] and found.tags() == {COLLAPSED_TAG: "true"}
    assert "class 2 for 100 % of source test images" in found.message()


def test_good_or_one_sided_data_is_not_a_collapse():
    good = torch.eye(4) * 20 + 1  # mostly right: each class predicted for 23 of 92 images
    assert collapse_of({"test/target": good}).metrics["test/target_top_prediction_share"] == pytest.approx(23 / 92)
    one_sided = torch.tensor([[96.0, 0.0], [3.0, 1.0]])  # the labels themselves are 96 % one class
    found = collapse_of({"test/target": one_sided, "test/source": good})
    assert found.collapsed == [] and found.tags() == {COLLAPSED_TAG: "false"} and found.message() is None
    assert collapse_of({}).tags() == {}  # no test pass, nothing to say


def test_a_run_whose_weights_decay_to_nothing_is_recorded_as_collapsed(tmp_path, mlflow_uri, caplog):
    """Weight decay of 50 per step at lr 0.1 drives every weight to zero: the logits are the same for every
    image, so every image gets one class."""
    run = tiny_run(tmp_path, mlflow_uri, ["optim.lr=0.1", "optim.weight_decay=50", "tracking.plots=false"])
    metrics = train(run)
    tags = MlflowClient(mlflow_uri).get_run(metrics["run_id"]).data.tags
    assert metrics["test/source_top_prediction_share"] == 1.0 and tags[COLLAPSED_TAG] == "true"
    assert tags["mlflow.note.content"].startswith("the selected network collapsed")
    assert "collapsed" in caplog.text


def test_a_run_that_learns_is_not_collapsed(tmp_path, mlflow_uri):
    metrics = train(tiny_run(tmp_path, mlflow_uri, ["tracking.plots=false", "trainer.limit_train_batches=1.0", "trainer.max_epochs=3"]))
    tags = MlflowClient(mlflow_uri).get_run(metrics["run_id"]).data.tags
    assert tags[COLLAPSED_TAG] == "false" and metrics["test/source_top_prediction_share"] < 0.95
    assert not tags["mlflow.note.content"].startswith("the selected network collapsed")
