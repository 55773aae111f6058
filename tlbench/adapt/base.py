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


@dataclass(frozen=True)
class Needs:
    """What a method reads and what it changes about training, declared once per method: the datamodule
    serves the streams it names, the module wires the extra views and freezes what it says, and nothing
    else asks the method what it is."""

    #: Labelled source batches; False for source-free methods (SHOT): no source batch anywhere, and
    #: `loss` gets None for every source argument.
    source: bool = True
    #: Unlabelled target batches during training; False for source_only and AdaBN.
    target: bool = True
    #: A strongly augmented view of each target batch (FixMatch): `loss` gets `logits_t_strong`.
    strong_view: bool = False
    #: Each target example's position in the target training set (SHOT's per-example pseudo-labels):
    #: `loss` gets `target_index`.
    target_index: bool = False
    #: The classifier stays as the run started it (SHOT's frozen source hypothesis).
    frozen_head: bool = False


class Adapter(nn.Module):
    #: What the method reads and changes (see Needs); the default is an ordinary two-domain method.
    needs: Needs = Needs()

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
        `step` the optimizer step, for schedules in absolute iterations (TLlib's λ warm-up). Methods whose
        `needs` name a strong view / the target index also receive `logits_t_strong` / `target_index`."""
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
