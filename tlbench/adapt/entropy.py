"""Entropy minimisation on target predictions (Grandvalet & Bengio 2005): pushes target examples
away from the decision boundary, i.e. the cluster assumption, with no extra parameters.

Applied at full weight from the first step it makes a network trained from scratch commit to
confident but arbitrary target predictions (we measured a collapse to ~13% on the digits task), so by
default its weight ramps up with Ganin's schedule, like DANN's reversal coefficient."""

from dataclasses import dataclass

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .layers import prediction_entropy


@dataclass
class EntropyConfig:
    name: str = "entropy"
    trade_off: float = 0.1
    #: Ramp the weight from 0 with 2/(1+exp(-10p))-1 over training progress p.
    ramp: bool = True


class EntropyMinimization(Adapter):
    def __init__(self, cfg: EntropyConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        target_entropy = prediction_entropy(logits_t).mean()
        weight = self.weight(progress)
        return AdaptOutput(loss=weight * target_entropy, logs={"transfer_loss": target_entropy.detach()})


@ADAPTERS.register("entropy", EntropyConfig)
def build_entropy(cfg: EntropyConfig, num_classes: int, feature_dim: int) -> Adapter:
    return EntropyMinimization(cfg)
