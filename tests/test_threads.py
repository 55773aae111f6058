"""Thread policy: tiny workloads train on one intra-op thread, larger ones keep the process's setting,
`trainer.threads` overrides both, and the previous setting is restored after the run."""

from __future__ import annotations

import torch
from torch import nn

from tlbench.threads import TINY_MAX_PARAMS, intra_op_threads, threads_for
from tlbench.train import train

from helpers import tiny_run


class _Module(nn.Module):
    def __init__(self, backbone_params: int, adapter_params: int = 0):
        super().__init__()
        self.backbone = nn.Linear(backbone_params - 1, 1)
        self.adapter = nn.Linear(max(adapter_params - 1, 1), 1)


def test_auto_uses_one_thread_for_tiny_models_and_keeps_the_setting_for_larger_ones():
    with intra_op_threads(2):
        assert threads_for(None, _Module(TINY_MAX_PARAMS)) == 1
        assert threads_for(None, _Module(TINY_MAX_PARAMS + 1)) == 2
        assert threads_for(None, _Module(1000, adapter_params=10 * TINY_MAX_PARAMS)) == 1  # a discriminator is not the model
        assert threads_for(3, _Module(10)) == 3


def test_a_run_records_its_threads_and_restores_the_process_setting(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    with intra_op_threads(2):
        result = train(tiny_run(tmp_path, mlflow_uri))  # small_cnn: ~30k parameters
        assert torch.get_num_threads() == 2
    assert MlflowClient(mlflow_uri).get_run(result["run_id"]).data.tags["threads"] == "1"
