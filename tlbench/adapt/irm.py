"""IRM (Arjovsky et al. 2019), IRMv1 as DomainBed implements it: per source domain, the squared gradient of
the risk with respect to a dummy classifier scale w = 1, estimated without bias as the product of the
gradients on the two halves of the domain's examples; averaged over domains. A domain-generalisation
method: it reads each source example's domain index and no target batch.

The module's pooled source cross-entropy is the risk term; this loss is λ·penalty, with λ = 1 for the
first `anneal_steps` optimizer steps (DomainBed: 500; it also resets Adam there, which tlbench does not).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class IRMConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "irm"
    #: λ, the penalty weight after the anneal (DomainBed's `irm_lambda`: 100, searched over 10^[-1, 5]).
    trade_off: float = 100.0
    #: Optimizer steps with λ = 1 first (DomainBed's `irm_penalty_anneal_iters`: 500).
    anneal_steps: int = 500


def irm_penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∂R/∂w at w = 1 on the even examples times the same on the odd ones (an unbiased ‖∇_w R‖²)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    first = F.cross_entropy(logits[::2] * scale, labels[::2])
    second = F.cross_entropy(logits[1::2] * scale, labels[1::2])
    grad_first = torch.autograd.grad(first, [scale], create_graph=True)[0]
    grad_second = torch.autograd.grad(second, [scale], create_graph=True)[0]
    return grad_first * grad_second


class IRM(Adapter):
    def __init__(self, cfg: IRMConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        domains = [d for d in torch.unique(domain_index) if (domain_index == d).sum() >= 2]
        if not domains:
            penalty = logits_s.sum() * 0.0
        else:
            penalty = torch.stack([irm_penalty(logits_s[domain_index == d], labels_s[domain_index == d]) for d in domains]).mean()
        weight = self.cfg.trade_off if step >= self.cfg.anneal_steps else 1.0
        return AdaptOutput(loss=weight * penalty, logs={"irm_penalty": penalty.detach()})


@ADAPTERS.register("irm", IRMConfig)
def build_irm(cfg: IRMConfig, num_classes: int, feature_dim: int) -> Adapter:
    return IRM(cfg)
