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


@dataclass
class AdaptOutput:
    """The weighted loss to add to source cross-entropy, plus scalars worth logging (under train/)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Needs:
    """What a method reads and what it changes about training, declared once per method as the `needs`
    class variable of its config schema. The run plan (tlbench/plan.py) reads it, and hands it to the
    datamodule (which streams to serve) and the module (which views to forward, what to freeze); nothing
    else asks the method what it is. A new stream is one field here and one place that serves it."""

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
    #: Each source example's domain index (0 with one source domain; one per domain when a run has
    #: several): source batches are `(x, y, domain)` and `loss` gets `domain_index`.
    domain_index: bool = False
    #: The classifier stays as the run started it (SHOT's frozen source hypothesis).
    frozen_head: bool = False
    #: The method's loss is the whole source objective (GroupDRO's weighted domain risks): the module
    #: does not add its pooled source cross-entropy (it still logs it).
    own_source_loss: bool = False
    #: The method changes the backbone before each evaluation (`before_evaluation`, e.g. AdaBN's
    #: BatchNorm statistics): evaluations need the target images, and cached features would be stale.
    evaluation_hook: bool = False
    #: The method runs the classifier network itself on source inputs it builds (Mixup's mixed images,
    #: MLDG's meta-test pass on adapted weights): `loss` gets `inputs_s` (the source batch augmented and
    #: preprocessed, as the module forwarded it) and `network`, inputs → logits over the module's own
    #: parameters (backbone, bottleneck, head), so gradients reach them.
    network: bool = False


def needs_of(cfg) -> Needs:
    """The needs a method's config schema declares; an ordinary two-domain method by default."""
    return getattr(type(cfg), "needs", Needs())


class Adapter(nn.Module):
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
        `needs` name a strong view / the target index / the domain index / the network also receive
        `logits_t_strong` / `target_index` / `domain_index` / `inputs_s` and `network`."""
        raise NotImplementedError

    def weight(self, progress: float) -> float:
        """The adaptation loss's weight at `progress`: `trade_off`, times the DANN ramp where the method's
        config has `ramp: true` (methods without a `ramp` field keep their own schedules)."""
        from .layers import dann_lambda

        cfg = self.cfg
        return cfg.trade_off * (dann_lambda(progress) if getattr(cfg, "ramp", False) else 1.0)

    def before_epoch(self, module: nn.Module, target_batches) -> None:
        """Hook run at the start of every training epoch with the target training images in their fixed
        order (unaugmented, preprocessed), e.g. to compute pseudo-labels for the epoch. Default: nothing."""

    @property
    def runs_before_epoch(self) -> bool:
        return type(self).before_epoch is not Adapter.before_epoch

    def before_evaluation(self, module: nn.Module, target_batches) -> None:
        """Hook run before each evaluation when the method's needs say `evaluation_hook` (AdaBN re-estimates
        BatchNorm statistics here). Default: nothing."""
