"""The contract of a domain-adaptation method: an extra loss on source and target features/logits.

A method never owns the training loop or the optimizer. TransferModule calls `loss(...)` once per
step with the labelled source batch's features/logits and the unlabelled target batch's; any
parameters the method has (e.g. a domain discriminator) are trained by the module's optimizer.
Target labels never reach this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

#: Loss scales of methods whose published implementations differ by a constant factor.
NORMALISATIONS = ("paper", "tllib")


def check_normalisation(value: str) -> None:
    if value not in NORMALISATIONS:
        from ..errors import ConfigError

        raise ConfigError(f"adapt.normalisation: '{value}' is not allowed; choose one of: {', '.join(NORMALISATIONS)}")


@dataclass
class AdaptOutput:
    """The weighted loss to add to source cross-entropy, plus scalars worth logging (under train/)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Adapter(nn.Module):
    #: False for methods that need no target batch during training (source_only, adabn).
    needs_target: bool = True
    #: False for source-free methods (SHOT): the run then draws no source batch at all, and `loss` gets
    #: None for every source argument.
    uses_source: bool = True
    #: True for methods that also need a strongly augmented view of each target batch (FixMatch):
    #: `loss` then gets `logits_t_strong`.
    needs_strong_view: bool = False
    #: True for methods that need each target example's position in the target training set (SHOT's
    #: per-example pseudo-labels): `loss` then gets `target_index`.
    needs_target_index: bool = False
    #: True for methods that keep the classifier fixed (SHOT's frozen source hypothesis).
    freezes_head: bool = False

    def loss(
        self,
        features_s: torch.Tensor,
        features_t: torch.Tensor | None,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor | None,
        labels_s: torch.Tensor,
        progress: float,
        step: int = 0,
    ) -> AdaptOutput:
        """`progress` ∈ [0, 1] is the fraction of training done (drives schedules such as DANN's λ);
        `step` the optimizer step, for schedules in absolute iterations (TLlib's λ warm-up). Methods that
        set `needs_strong_view` / `needs_target_index` also receive `logits_t_strong` / `target_index`."""
        raise NotImplementedError

    def weight(self, progress: float) -> float:
        """The adaptation loss's weight at `progress`: `trade_off`, times the DANN ramp where the method's
        config has `ramp: true` (methods without a `ramp` field keep their own schedules)."""
        from .layers import dann_lambda

        cfg = self.cfg
        return cfg.trade_off * (dann_lambda(progress) if getattr(cfg, "ramp", False) else 1.0)

    @property
    def changes_backbone_before_evaluation(self) -> bool:
        """True for methods that override `before_evaluation` (so evaluations need target batches, and
        cached backbone features would be stale)."""
        return type(self).before_evaluation is not Adapter.before_evaluation

    def before_epoch(self, module: nn.Module, target_batches) -> None:
        """Hook run at the start of every training epoch with the target training images in their fixed
        order (unaugmented, preprocessed), e.g. to compute pseudo-labels for the epoch. Default: nothing."""

    @property
    def runs_before_epoch(self) -> bool:
        return type(self).before_epoch is not Adapter.before_epoch

    def before_evaluation(self, module: nn.Module, target_batches) -> None:
        """Hook run before each evaluation (AdaBN re-estimates BatchNorm statistics here). Default: nothing."""
