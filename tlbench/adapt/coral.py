"""Deep CORAL (Sun & Saenko 2016): match second-order statistics, ‖C_s − C_t‖_F² / (4d²), a cheap
alignment with no extra parameters and no kernel bandwidths to tune."""

from dataclasses import dataclass

import torch

from . import ADAPTERS
from .base import Adapter, AdaptOutput


@dataclass
class CORALConfig:
    name: str = "coral"
    trade_off: float = 1.0
    #: Warm the weight up from 0 with the DANN ramp 2/(1+e^(−10p))−1 over training progress p, as DANN and CDAN do
    #: (off: the paper); alignment of still-random features can otherwise collapse them before the classifier learns.
    ramp: bool = False
    #: paper: ‖C_s − C_t‖²_F / (4d²). tllib: mean of (C_s − C_t)² plus mean of (μ_s − μ_t)², i.e. ≈ 4×
    #: the paper's value plus a mean term (TLlib/DomainBed); pick it to compare trade-offs with theirs.
    normalisation: str = "paper"


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased (n − 1) feature covariance (d, d), as in the paper."""
    centered = x - x.mean(dim=0, keepdim=True)
    return centered.T @ centered / max(len(x) - 1, 1)


def coral_loss(features_s: torch.Tensor, features_t: torch.Tensor, normalisation: str = "paper") -> torch.Tensor:
    covariance_gap = (covariance(features_s) - covariance(features_t)).pow(2)
    if normalisation == "tllib":
        return covariance_gap.mean() + (features_s.mean(0) - features_t.mean(0)).pow(2).mean()
    d = features_s.shape[1]
    return covariance_gap.sum() / (4.0 * d * d)


class CORAL(Adapter):
    def __init__(self, cfg: CORALConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        transfer = coral_loss(features_s, features_t, self.cfg.normalisation)
        return AdaptOutput(loss=self.weight(progress) * transfer, logs={"transfer_loss": transfer.detach()})


@ADAPTERS.register("coral", CORALConfig)
def build_coral(cfg: CORALConfig, num_classes: int, feature_dim: int) -> Adapter:
    return CORAL(cfg)
