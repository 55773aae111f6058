"""What every schedule shares, kept in one place: the common config fields (BatchNorm policy, L2-SP
strength), their validation, and the L2-SP regulariser.

Schedule configs inherit `ScheduleConfig`; schedule classes inherit `ConfiguredSchedule`, so a new
schedule only states which stages train when (and at what LR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import FreezeSchedule


def require(ok: bool, key: str, message: str) -> None:
    """Raise a one-line ConfigError naming `freeze.<key>` unless `ok`."""
    if not ok:
        raise ConfigError(f"freeze.{key}: {message}")


@dataclass
class ScheduleConfig:
    """Fields every schedule accepts. Values are checked on construction, so a bad value fails at
    config validation (before any data or weights load), not mid-run."""

    name: str = ""
    #: BatchNorm in frozen stages: train | frozen_stats | frozen_affine (see FreezeSchedule.bn_policy).
    bn_policy: str = "frozen_stats"
    #: L2-SP strength α (Li et al. 2018): adds α/2·Σ‖w − w0‖² over trainable backbone weights, w0 = the
    #: starting (pretrained) weights. 0 disables it. The paper's β·‖head‖² term is not offered here:
    #: the schedule only sees the backbone; use optim.weight_decay for the head.
    l2sp_alpha: float = 0.0


class L2SP:
    """α/2·Σ‖w − w0‖² over the backbone's trainable parameters: pulls fine-tuned weights toward the
    starting point instead of toward zero, which keeps what pretraining learned.

    w0 is captured (detached copy) at the first call: the first training step unless the caller calls
    earlier. It is not saved in checkpoints, so a resumed run re-anchors at the resumed weights unless
    the first call happens before the checkpoint is restored (e.g. when the module is built).
    """

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.reference: dict[str, torch.Tensor] | None = None

    def __call__(self, backbone: nn.Module) -> torch.Tensor | None:
        if self.reference is None:
            self.reference = {name: p.detach().clone() for name, p in backbone.named_parameters()}
        terms = []
        for name, p in backbone.named_parameters():
            if p.requires_grad:
                if self.reference[name].device != p.device:  # model moved after capture: move w0 once
                    self.reference[name] = self.reference[name].to(p.device)
                terms.append((p - self.reference[name]).pow(2).sum())
        if not terms:  # nothing trains (e.g. a linear-probe epoch): nothing to pull back
            return None
        return 0.5 * self.alpha * torch.stack(terms).sum()


class ConfiguredSchedule(FreezeSchedule):
    """A FreezeSchedule built from a ScheduleConfig: applies the shared fields (bn_policy, L2-SP)."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.bn_policy = cfg.bn_policy  # allowed values: config_rules.py, checked when the config is validated
        self.l2sp = L2SP(cfg.l2sp_alpha) if cfg.l2sp_alpha > 0 else None

    def regularizer(self, backbone: nn.Module) -> torch.Tensor | None:
        return self.l2sp(backbone) if self.l2sp is not None else None
