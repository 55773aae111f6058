"""Thread policy: a head on cached features trains on one intra-op thread, networks keep the process's
setting, `trainer.threads` overrides both, and the previous setting is restored after the run."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_run
from mlflow.tracking import MlflowClient

from tlbench.threads import intra_op_threads
from tlbench.train import train


def _threads_tag(run, mlflow_uri: str) -> str:
    return MlflowClient(mlflow_uri).get_run(train(run)["run_id"]).data.tags["threads"]


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_cached_heads_use_one_thread_networks_keep_the_setting_and_the_setting_comes_back(tmp_path, mlflow_uri):
    with intra_op_threads(2):
        probe = tiny_run(tmp_path / "probe", mlflow_uri, ["freeze=linear_probe", "trainer.feature_cache=true"])
        assert _threads_tag(probe, mlflow_uri) == "1"  # a linear head on cached features
        assert torch.get_num_threads() == 2
        assert _threads_tag(tiny_run(tmp_path / "full", mlflow_uri), mlflow_uri) == "2"  # small_cnn trains: keep 2
        assert _threads_tag(tiny_run(tmp_path / "set", mlflow_uri, ["trainer.threads=1"]), mlflow_uri) == "1"
        assert torch.get_num_threads() == 2
