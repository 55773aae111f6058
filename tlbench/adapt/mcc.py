"""MCC, minimum class confusion (Jin et al. 2020): penalise how often target predictions put mass on
two classes at once. Needs no discriminator and works on logits only, so it also suits many classes.

Per batch: Ŷ = softmax(logits_t / T); weights W_ii ∝ 1 + exp(−H(Ŷ_i)) (mean 1, detached) favour
confident examples; C = Ŷᵀ W Ŷ; each column of C is normalised to sum 1; the loss is the mass off the
diagonal divided by the number of classes."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .layers import prediction_entropy


@dataclass
class MCCConfig:
    name: str = "mcc"
    trade_off: float = 1.0
    #: Softmax temperature; > 1 softens over-confident predictions (the paper uses 2.5).
    temperature: float = 2.5


def class_confusion_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    scaled = logits / temperature
    probs = F.softmax(scaled, dim=1)
    weights = 1.0 + torch.exp(-prediction_entropy(scaled.detach()))
    weights = weights / weights.sum() * len(logits)
    confusion = (probs * weights.unsqueeze(1)).T @ probs
    confusion = confusion / confusion.sum(dim=0, keepdim=True)
    num_classes = logits.shape[1]
    return (confusion.sum() - confusion.trace()) / num_classes


class MCC(Adapter):
    def __init__(self, cfg: MCCConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        transfer = class_confusion_loss(logits_t, self.cfg.temperature)
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs={"transfer_loss": transfer.detach()})


@ADAPTERS.register("mcc", MCCConfig)
def build_mcc(cfg: MCCConfig, num_classes: int, feature_dim: int) -> Adapter:
    return MCC(cfg)
