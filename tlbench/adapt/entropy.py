"""Entropy minimisation on target predictions (Grandvalet & Bengio 2005): pushes target examples
away from the decision boundary, i.e. the cluster assumption, with no extra parameters."""

from dataclasses import dataclass

from . import ADAPTERS
from .base import AdaptOutput, Adapter
from .layers import prediction_entropy


@dataclass
class EntropyConfig:
    name: str = "entropy"
    trade_off: float = 1.0


class EntropyMinimization(Adapter):
    def __init__(self, cfg: EntropyConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress):
        target_entropy = prediction_entropy(logits_t).mean()
        return AdaptOutput(loss=self.cfg.trade_off * target_entropy,
                           logs={"transfer_loss": target_entropy.detach()})


@ADAPTERS.register("entropy", EntropyConfig)
def build_entropy(cfg: EntropyConfig, num_classes: int, feature_dim: int) -> Adapter:
    return EntropyMinimization(cfg)
