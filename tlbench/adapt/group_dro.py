"""GroupDRO (Sagawa et al. 2020), as DomainBed implements it: keep a weight q_d per source domain, raise it
multiplicatively with the domain's risk (q_d ← q_d·exp(η·R_d), then normalise) and minimise Σ_d q_d·R_d,
so training concentrates on the worst source domain. Its loss is the whole source objective (Needs:
own_source_loss), it reads each source example's domain index and no target batch.

Batches pool the source domains (DomainBed draws one minibatch per domain); a domain absent from a batch
keeps its weight for that step.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class GroupDROConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True, own_source_loss=True)
    name: str = "group_dro"
    #: η, the step size of the domain weights (DomainBed's `groupdro_eta`: 0.01, searched over 10^[-3, -1]).
    eta: float = 0.01


class GroupDRO(Adapter):
    def __init__(self, cfg: GroupDROConfig, num_domains: int):
        super().__init__()
        self.cfg = cfg
        # uniform at the start; saved with checkpoints, so a resumed run continues the weights
        self.register_buffer("domain_weights", torch.full((num_domains,), 1.0 / num_domains))

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        losses = F.cross_entropy(logits_s, labels_s, reduction="none")
        present = torch.unique(domain_index)
        risks = torch.stack([losses[domain_index == d].mean() for d in present])
        with torch.no_grad():
            weights = self.domain_weights.clone()
            weights[present] = weights[present] * torch.exp(self.cfg.eta * risks.detach())
            self.domain_weights = weights / weights.sum()
        objective = (self.domain_weights[present] * risks).sum()
        return AdaptOutput(loss=objective, logs={"worst_domain_risk": risks.max().detach(), "max_domain_weight": self.domain_weights.max()})


@ADAPTERS.register("group_dro", GroupDROConfig)
def build_group_dro(cfg: GroupDROConfig, num_classes: int, feature_dim: int, num_domains: int = 1) -> Adapter:
    return GroupDRO(cfg, num_domains)
