"""Optimizer and LR schedule from OptimConfig: one param group per backbone stage (so schedules can give
earlier layers smaller learning rates), then the head and the adaptation method's own parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def param_groups(
    stage_params: list[list[nn.Parameter]],
    stage_lr_scales: list[float],
    others: dict[str, tuple[list[nn.Parameter], float]],
    base_lr: float,
) -> list[dict]:
    """One group per backbone stage (lr = base × stage scale), then one per named part (lr = base × its scale)."""
    groups = [{"name": f"stage{i}", "params": params, "lr": base_lr * scale} for i, (params, scale) in enumerate(zip(stage_params, stage_lr_scales)) if params]
    groups += [{"name": name, "params": params, "lr": base_lr * scale} for name, (params, scale) in others.items() if params]
    return groups


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(kind: str, progress: float, step: int = 0, inv_gamma: float = 0.001, inv_power: float = 0.75) -> float:
    """Multiplier on every group's initial LR at training progress p ∈ [0, 1] (optimizer step `step`)."""
    if kind == "inv":  # TLlib: lr_i = lr_0 (1 + γ i)^-power, in absolute steps whatever the run's length
        return (1.0 + inv_gamma * step) ** -inv_power
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "dann":  # Ganin & Lempitsky 2015: lr_p = lr_0 / (1 + 10 p)^0.75
        return (1.0 + 10.0 * progress) ** -0.75
    return 1.0


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg.scheduler, step / total, step, cfg.inv_gamma, cfg.inv_power))
