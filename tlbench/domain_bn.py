"""Domain-specific BatchNorm (Chang et al. 2019, DSBN): every BatchNorm layer gets one copy per domain,
so source and target are normalised by their own statistics and affine parameters while all other
weights are shared. `batch_composition=domain_bn` turns it on; source batches and source evaluation use
the source copy, target batches and target evaluation the target copy."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

DOMAINS = ("source", "target")


class DomainSpecificBatchNorm(nn.Module):
    """Two copies of one BatchNorm layer; `domain` says which one normalises the next batch."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.source = norm
        self.target = copy.deepcopy(norm)
        self.domain = "target"  # inference on the deployment domain unless told otherwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.source if self.domain == "source" else self.target)(x)


def split_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm layer under `module` by a DomainSpecificBatchNorm; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DomainSpecificBatchNorm(child))
            count += 1
        elif not isinstance(child, DomainSpecificBatchNorm):
            count += split_batchnorm(child)
    return count


@contextmanager
def batchnorm_domain(module: nn.Module, domain: str):
    """Within the block, every domain-specific BatchNorm under `module` uses `domain`'s copy."""
    layers = [m for m in module.modules() if isinstance(m, DomainSpecificBatchNorm)]
    before = [m.domain for m in layers]
    for layer in layers:
        layer.domain = domain
    try:
        yield
    finally:
        for layer, previous in zip(layers, before):
            layer.domain = previous
