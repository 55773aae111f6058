"""Mixup across source domains (Yan et al. 2020, "Improve unsupervised domain adaptation with mixup
training"; DomainBed's `Mixup`): each source image is blended with a partner image from another source
domain, x̃ = λ·x + (1−λ)·x', λ ~ Beta(α, α) per batch, and the network is trained on x̃ against both labels,
λ·CE(f(x̃), y) + (1−λ)·CE(f(x̃), y'). The loss is the whole source objective (DomainBed's Mixup has no plain
ERM term); it runs the network itself on the mixed images (Needs: network) and reads no target batch.

Batches pool the source domains (DomainBed pairs one minibatch per domain): each example draws its partner
uniformly among the batch's examples of other domains, or of the whole batch when only one domain is
present (plain mixup).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class MixupConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True, own_source_loss=True, network=True)
    name: str = "mixup"
    #: α of the Beta(α, α) the mixing weight is drawn from (DomainBed's `mixup_alpha`: 0.2, searched over 10^[-1, 1]).
    alpha: float = 0.2


def cross_domain_partners(domains: torch.Tensor) -> torch.Tensor:
    """For each example, the index of a partner drawn uniformly from the examples of other domains (from the
    whole batch, itself excluded, when there is no other domain)."""
    other = domains[:, None] != domains[None, :]
    if not other.any(1).all():  # a domain alone in the batch: any other example will do
        other = ~torch.eye(len(domains), dtype=torch.bool, device=domains.device)
    scores = torch.rand(other.shape, device=domains.device).masked_fill(~other, -1.0)
    return scores.argmax(1)


def mixup_loss(network, inputs: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·CE(f(x̃), y) + (1−λ)·CE(f(x̃), y') for x̃ = λ·x + (1−λ)·x_partner."""
    logits = network(lam * inputs + (1 - lam) * inputs[partners])
    return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[partners])


class Mixup(Adapter):
    def __init__(self, cfg: MixupConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None, inputs_s=None, network=None):
        lam = float(torch.distributions.Beta(self.cfg.alpha, self.cfg.alpha).sample())
        partners = cross_domain_partners(domain_index)
        objective = mixup_loss(network, inputs_s, labels_s, partners, lam)
        return AdaptOutput(loss=objective, logs={"mixup_loss": objective.detach(), "mixup_lambda": torch.tensor(lam)})


@ADAPTERS.register("mixup", MixupConfig)
def build_mixup(cfg: MixupConfig, num_classes: int, feature_dim: int) -> Adapter:
    return Mixup(cfg)
