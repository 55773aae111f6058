"""AdaBN (Li et al. 2016): no extra loss; before evaluation, re-estimate every BatchNorm layer's
running statistics on the target training images, so the domain shift carried by first and second
moments is removed at test time. Training itself is plain source-only."""

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from . import ADAPTERS
from .base import Adapter, Needs
from .source_only import SourceOnly


@dataclass
class AdaBNConfig:
    needs: ClassVar[Needs] = Needs(target=False, evaluation_hook=True)
    name: str = "adabn"


@torch.no_grad()
def recompute_batchnorm_statistics(module: nn.Module, batches) -> int:
    """Replace BatchNorm running statistics with the cumulative average over `batches` (tensors, or
    tuples whose first element is the image tensor). Only BatchNorm layers run in train mode, so
    dropout does not distort the statistics; every layer's mode and momentum is restored. Parameters
    are untouched. Returns the number of batches used; with none (or on an error) the old statistics
    are kept."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.track_running_stats]
    if not norms:
        warnings.warn("AdaBN: the backbone has no BatchNorm layers with running statistics; nothing to adapt", stacklevel=2)
        return 0
    device = norms[0].running_mean.device
    modes = {m: m.training for m in module.modules()}
    momenta = {m: m.momentum for m in norms}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms}
    module.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average over all batches seen
        m.train()
    used, completed = 0, False
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            module(images.to(device))
            used += 1
        completed = True
    finally:
        for m in norms:
            m.momentum = momenta[m]
            if not completed or used == 0:  # keep the old statistics rather than partial or empty ones
                m.running_mean.copy_(saved[m][0])
                m.running_var.copy_(saved[m][1])
                m.num_batches_tracked.copy_(saved[m][2])
        for m, training in modes.items():
            m.training = training
    return used


class AdaBN(SourceOnly):
    def before_evaluation(self, module: nn.Module, target_batches) -> None:
        recompute_batchnorm_statistics(module, target_batches)


@ADAPTERS.register("adabn", AdaBNConfig)
def build_adabn(cfg: AdaBNConfig, num_classes: int, feature_dim: int) -> Adapter:
    return AdaBN()
