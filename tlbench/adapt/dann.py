"""DANN (Ganin & Lempitsky 2015): a domain discriminator behind gradient reversal, so the backbone
learns features on which source and target cannot be told apart."""

from dataclasses import dataclass
from typing import Optional

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .layers import DomainDiscriminator, dann_lambda, domain_adversarial_loss, ramp_position


@dataclass
class DANNConfig:
    name: str = "dann"
    trade_off: float = 1.0
    #: Width of the discriminator's two hidden layers.
    hidden: int = 1024
    #: Hidden layers of the discriminator (TLlib 2; the DANN paper's digit model 1 of 100 units).
    depth: int = 2
    dropout: float = 0.5
    batch_norm: bool = False
    #: Steepness γ and ceiling of the reversal coefficient's ramp λ(p) = max·(2/(1+e^(−γp)) − 1).
    gamma: float = 10.0
    max_lambda: float = 1.0
    #: null: the ramp runs over training progress p (paper); N: over optimizer steps, p = step / N (TLlib).
    ramp_steps: Optional[int] = None


class DANN(Adapter):
    def __init__(self, cfg: DANNConfig, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.discriminator = DomainDiscriminator(feature_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, cfg.depth)

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        coeff = dann_lambda(ramp_position(progress, step, self.cfg.ramp_steps), self.cfg.gamma, self.cfg.max_lambda)
        transfer, domain_acc = domain_adversarial_loss(self.discriminator, features_s, features_t, coeff)
        logs = {"transfer_loss": transfer.detach(), "domain_acc": domain_acc, "dann_lambda": features_s.new_tensor(coeff)}
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs=logs)


@ADAPTERS.register("dann", DANNConfig)
def build_dann(cfg: DANNConfig, num_classes: int, feature_dim: int) -> Adapter:
    return DANN(cfg, feature_dim)
