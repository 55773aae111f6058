"""V-REx (Krueger et al. 2021, "Out-of-distribution generalization via risk extrapolation"): penalise the
variance of the per-domain risks across the source domains, so the model cannot do well on one source
domain at the price of another. A domain-generalisation method: it reads no target batch, only each
source example's domain index (the `domain_index` stream of Needs).

The module adds source cross-entropy over the pooled batch (the mean risk when domains are equally
represented in a batch, as DomainBed's ERM term); this loss is β·Var_d(R_d), the population variance as
in DomainBed's implementation. With one source domain the variance is 0 and V-REx is ERM.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class VRExConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "vrex"
    #: β, the weight of the risk-variance penalty (DomainBed's `vrex_lambda` search range: 10^[-1, 5]).
    trade_off: float = 10.0
    #: Optimizer steps with the penalty at weight 1 before β applies (DomainBed's `vrex_penalty_anneal_iters`).
    anneal_steps: int = 0


def domain_risks(logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each source domain present in the batch, in domain-index order."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    return torch.stack([losses[domains == d].mean() for d in torch.unique(domains)])


class VREx(Adapter):
    def __init__(self, cfg: VRExConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        risks = domain_risks(logits_s, labels_s, domain_index)
        penalty = ((risks - risks.mean()) ** 2).mean()
        weight = self.cfg.trade_off if step >= self.cfg.anneal_steps else 1.0
        return AdaptOutput(loss=weight * penalty, logs={"risk_variance": penalty.detach(), "domains_in_batch": torch.tensor(float(len(risks)))})


@ADAPTERS.register("vrex", VRExConfig)
def build_vrex(cfg: VRExConfig, num_classes: int, feature_dim: int) -> Adapter:
    return VREx(cfg)
