"""The contract of a freezing schedule: which backbone stages train at which epoch, and at what LR.

Schedules only answer questions; TransferModule applies the answers (requires_grad, BatchNorm mode,
optimizer param groups), so every schedule works on every backbone that exposes stages.
"""

from __future__ import annotations

import torch
from torch import nn

BN_POLICIES = ("train", "frozen_stats", "frozen_affine")


class FreezeSchedule:
    #: False for `scratch`: the backbone is built without pretrained weights.
    uses_pretrained: bool = True
    #: What happens to BatchNorm layers inside *frozen* stages: "train" (statistics keep updating),
    #: "frozen_stats" (eval mode: running statistics fixed), "frozen_affine" (statistics fixed and
    #: affine parameters frozen even in trainable stages).
    bn_policy: str = "frozen_stats"

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        """Indices of backbone stages whose parameters train during `epoch` (0-based). The head always trains."""
        raise NotImplementedError

    def stage_lr_scales(self, num_stages: int) -> list[float]:
        """Multiplier on the base learning rate for each stage's param group (head and adapter use 1)."""
        return [1.0] * num_stages

    def regularizer(self, backbone: nn.Module) -> torch.Tensor | None:
        """Optional extra loss on backbone weights (e.g. L2-SP toward the pretrained weights)."""
        return None

    def always_frozen_prefix(self, num_stages: int, max_epochs: int) -> int:
        """Number of leading stages frozen for every epoch of the run (enables feature caching)."""
        frozen = 0
        while frozen < num_stages and all(frozen not in self.trainable_stages(epoch, num_stages) for epoch in range(max_epochs)):
            frozen += 1
        return frozen
