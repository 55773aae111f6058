"""The proxy A-distance and embedding a run logs with tracking.analysis=true (tlbench/analysis.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_run
from mlflow.tracking import MlflowClient

from tlbench.analysis import proxy_a_distance


def test_a_distance_is_near_0_for_one_distribution_and_near_2_for_separable_ones():
    rng = np.random.default_rng(0)
    same = proxy_a_distance(rng.normal(size=(600, 8)), rng.normal(size=(600, 8)))
    apart = proxy_a_distance(rng.normal(size=(600, 8)), rng.normal(size=(600, 8)) + 3.0)
    assert same < 0.3 and apart > 1.9


def test_a_distance_uses_the_same_number_from_each_domain():
    rng = np.random.default_rng(1)
    # 1,000 source vs 50 target from the same distribution: a classifier that always says "source" would
    # score 95 % on an unbalanced set; balanced, chance is 50 % and the distance stays near 0
    assert proxy_a_distance(rng.normal(size=(1000, 4)), rng.normal(size=(50, 4))) < 0.6


@pytest.mark.slow  # trains
def test_a_run_with_analysis_logs_the_a_distance_and_the_embedding(tmp_path, mlflow_uri):
    from tlbench.train import train

    result = train(tiny_run(tmp_path, mlflow_uri, ["tracking.analysis=true"]))
    client = MlflowClient(mlflow_uri)
    distance = client.get_run(result["run_id"]).data.metrics["analysis/a_distance"]
    assert 0.0 <= distance <= 2.0
    assert "plots/embedding.png" in [a.path for a in client.list_artifacts(result["run_id"], "plots")]
