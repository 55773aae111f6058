"""DANN for domain generalisation (Ganin et al. 2016, as DomainBed runs it on several source domains): a
discriminator predicts which source domain each feature came from, behind gradient reversal, so the
features stop telling the source domains apart. It reads the domain index and no target batch (the
two-domain DA version is `dann`). With one source domain the discriminator has nothing to learn.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs
from .layers import DomainDiscriminator, dann_lambda, reverse_gradient


@dataclass
class DGDANNConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "dg_dann"
    #: λ, the adversarial loss weight (DomainBed's `lambda`: 1, searched over 10^[-2, 2]).
    trade_off: float = 1.0
    #: The discriminator MLP (DomainBed: 3 layers of 256).
    hidden: int = 256
    depth: int = 3
    dropout: float = 0.0
    #: Steepness of the reversal coefficient's ramp λ(p) = 2/(1+e^(−γp)) − 1 over training progress p.
    gamma: float = 10.0


class DGDANN(Adapter):
    def __init__(self, cfg: DGDANNConfig, feature_dim: int, num_domains: int):
        super().__init__()
        self.cfg = cfg
        self.discriminator = DomainDiscriminator(feature_dim, cfg.hidden, cfg.dropout, depth=cfg.depth, outputs=max(num_domains, 2))

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        coeff = dann_lambda(progress, self.cfg.gamma)
        domain_logits = self.discriminator(reverse_gradient(features_s, coeff))
        transfer = F.cross_entropy(domain_logits, domain_index)
        domain_acc = (domain_logits.detach().argmax(1) == domain_index).float().mean()
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs={"transfer_loss": transfer.detach(), "domain_acc": domain_acc})


@ADAPTERS.register("dg_dann", DGDANNConfig)
def build_dg_dann(cfg: DGDANNConfig, num_classes: int, feature_dim: int, num_domains: int = 1) -> Adapter:
    return DGDANN(cfg, feature_dim, num_domains)
