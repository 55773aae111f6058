"""CORAL and MMD across source domains (DomainBed's CORAL and MMD for domain generalisation): the mean over
all pairs of source domains of a distance between their features, so the features the classifier sees
are the same whichever source domain an image came from. They read each source example's domain index
and no target batch (the two-domain DA versions are `coral` and `dan`).

`dg_coral`: DomainBed's form, mean squared gap of the means plus of the covariances (coral_loss with
`tllib` normalisation). `dg_mmd`: squared multi-kernel MMD with Gaussian bandwidths scaled to the batch
(layers.mk_mmd2), or with DomainBed's fixed kernel (`kernel=fixed`). With one source domain there are no pairs and both are ERM.
"""

from dataclasses import dataclass, field
from itertools import combinations
from typing import ClassVar

import torch

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs
from .coral import coral_loss
from .layers import fixed_kernel_mmd2, mk_mmd2


@dataclass
class DGCORALConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "dg_coral"
    #: γ, the alignment weight (DomainBed's `mmd_gamma`: 1, searched over 10^[-1, 1]).
    trade_off: float = 1.0


@dataclass
class DGMMDConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "dg_mmd"
    trade_off: float = 1.0
    #: `batch`: Gaussian bandwidths as multiples (`kernel_multipliers`) of the batch's mean squared pairwise
    #: distance, as our DA `dan`; `fixed`: DomainBed's own kernel, fixed precisions 10^-3 … 10^3
    #: (layers.fixed_kernel_mmd2).
    kernel: str = "batch"
    kernel_multipliers: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])


def pairwise_alignment(features: torch.Tensor, domains: torch.Tensor, distance) -> torch.Tensor:
    """Mean of `distance(features of a, features of b)` over all pairs of domains with ≥ 2 examples in the batch."""
    groups = [features[domains == d] for d in torch.unique(domains)]
    groups = [g for g in groups if len(g) >= 2]
    gaps = [distance(a, b) for a, b in combinations(groups, 2)]
    return torch.stack(gaps).mean() if gaps else features.sum() * 0.0


class SourceAlignment(Adapter):
    def __init__(self, cfg, distance):
        super().__init__()
        self.cfg = cfg
        self.distance = distance

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        gap = pairwise_alignment(features_s, domain_index, self.distance)
        return AdaptOutput(loss=self.cfg.trade_off * gap, logs={"source_domain_gap": gap.detach()})


@ADAPTERS.register("dg_coral", DGCORALConfig)
def build_dg_coral(cfg: DGCORALConfig, num_classes: int, feature_dim: int) -> Adapter:
    return SourceAlignment(cfg, lambda a, b: coral_loss(a, b, "tllib"))


@ADAPTERS.register("dg_mmd", DGMMDConfig)
def build_dg_mmd(cfg: DGMMDConfig, num_classes: int, feature_dim: int) -> Adapter:
    if cfg.kernel == "fixed":
        return SourceAlignment(cfg, fixed_kernel_mmd2)
    return SourceAlignment(cfg, lambda a, b: mk_mmd2(a, b, cfg.kernel_multipliers))
