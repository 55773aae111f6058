"""DANN for domain generalisation (Ganin et al. 2016, as DomainBed runs it on several source domains): a
discriminator predicts which source domain each feature came from, behind gradient reversal, so the
features stop telling the source domains apart. It reads the domain index and no target batch (the
two-domain DA version is `dann`). With one source domain the discriminator has nothing to learn.

`dg_cdann` (Li et al. 2018, "Deep domain generalization via conditional invariant adversarial networks",
as DomainBed's CDANN): the discriminator also sees the class, through a learned class embedding added to
the features, so it aligns each class's features across domains rather than the marginals (which differ
when the domains' label mixes do). Both train the discriminator through gradient reversal, as tlbench's
`dann` does; DomainBed alternates discriminator and feature steps instead.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import nn

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


@dataclass
class DGCDANNConfig(DGDANNConfig):
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True)
    name: str = "dg_cdann"


class DGDANN(Adapter):
    def __init__(self, cfg: DGDANNConfig, feature_dim: int, num_domains: int, num_classes: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.discriminator = DomainDiscriminator(feature_dim, cfg.hidden, cfg.dropout, depth=cfg.depth, outputs=max(num_domains, 2))
        #: CDANN's class embedding, added to the features the discriminator sees (None: plain DANN).
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes, feature_dim)

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None):
        coeff = dann_lambda(progress, self.cfg.gamma)
        seen = reverse_gradient(features_s, coeff)
        if self.class_embedding is not None:
            seen = seen + self.class_embedding(labels_s)
        domain_logits = self.discriminator(seen)
        transfer = F.cross_entropy(domain_logits, domain_index)
        domain_acc = (domain_logits.detach().argmax(1) == domain_index).float().mean()
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs={"transfer_loss": transfer.detach(), "domain_acc": domain_acc})


@ADAPTERS.register("dg_dann", DGDANNConfig)
def build_dg_dann(cfg: DGDANNConfig, num_classes: int, feature_dim: int, num_domains: int = 1) -> Adapter:
    return DGDANN(cfg, feature_dim, num_domains)


@ADAPTERS.register("dg_cdann", DGCDANNConfig)
def build_dg_cdann(cfg: DGCDANNConfig, num_classes: int, feature_dim: int, num_domains: int = 1) -> Adapter:
    return DGDANN(cfg, feature_dim, num_domains, num_classes=num_classes)
