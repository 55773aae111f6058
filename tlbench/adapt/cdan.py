"""CDAN / CDAN+E (Long et al. 2018): the discriminator sees features *conditioned on predictions*,
via the multilinear map f ⊗ softmax(g), so it aligns class-conditional structure that DANN's
marginal alignment can blur. CDAN+E also up-weights confident examples by 1 + exp(−entropy)."""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .dann import DANNConfig
from .layers import DomainDiscriminator, dann_lambda, domain_adversarial_loss, prediction_entropy, ramp_position

#: Above this many map entries (feature_dim × num_classes) the full map is replaced by the
#: randomized one, as in the paper.
MAX_FULL_MAP_DIM = 4096


@dataclass
class CDANConfig(DANNConfig):
    """DANN's discriminator and ramp, plus the multilinear map's options."""

    name: str = "cdan"
    #: null = automatic (randomized when feature_dim·num_classes > 4096); true/false forces it.
    randomized: Optional[bool] = None
    #: Output size of the randomized multilinear map.
    randomized_dim: int = 1024


@dataclass
class CDANEConfig(CDANConfig):
    name: str = "cdan_e"


def multilinear_map(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Flattened outer product per example: out[i, c·d + k] = probs[i, c] · features[i, k]; (N, C·d)."""
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """(f R_f) ⊙ (g R_g) / √r with fixed Gaussian R_f, R_g: an unbiased low-dimensional
    approximation of the multilinear map's inner products, for when C·d is too large."""

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int):
        super().__init__()
        self.register_buffer("proj_features", torch.randn(feature_dim, output_dim))
        self.register_buffer("proj_probs", torch.randn(num_classes, output_dim))

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.proj_features.shape[1])
        return (features @ self.proj_features) * (probs @ self.proj_probs) / scale


def certainty_weights(logits: torch.Tensor) -> torch.Tensor:
    """1 + exp(−H(p)), normalised to mean 1 within the batch so each domain keeps equal total weight."""
    weights = 1.0 + torch.exp(-prediction_entropy(logits))
    return weights / weights.mean()


class CDAN(Adapter):
    def __init__(self, cfg: CDANConfig, num_classes: int, feature_dim: int, entropy_conditioning: bool):
        super().__init__()
        self.cfg = cfg
        self.entropy_conditioning = entropy_conditioning
        randomized = cfg.randomized
        if randomized is None:
            randomized = feature_dim * num_classes > MAX_FULL_MAP_DIM
        self.random_map = None
        if randomized:
            self.random_map = RandomizedMultilinearMap(feature_dim, num_classes, cfg.randomized_dim)
        map_dim = cfg.randomized_dim if randomized else feature_dim * num_classes
        self.discriminator = DomainDiscriminator(map_dim, cfg.hidden, cfg.dropout, cfg.batch_norm, cfg.depth)

    def conditioned(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # Predictions are detached as in the reference implementation: the adversarial gradient
        # shapes the features, not the classifier's outputs.
        probs = F.softmax(logits, dim=1).detach()
        if self.random_map is not None:
            return self.random_map(features, probs)
        return multilinear_map(features, probs)

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        coeff = dann_lambda(ramp_position(progress, step, self.cfg.ramp_steps), self.cfg.gamma, self.cfg.max_lambda)
        weights_s = weights_t = None
        if self.entropy_conditioning:
            weights_s, weights_t = certainty_weights(logits_s.detach()), certainty_weights(logits_t.detach())
        transfer, domain_acc = domain_adversarial_loss(
            self.discriminator,
            self.conditioned(features_s, logits_s),
            self.conditioned(features_t, logits_t),
            coeff,
            weights_s,
            weights_t,
        )
        logs = {"transfer_loss": transfer.detach(), "domain_acc": domain_acc, "dann_lambda": features_s.new_tensor(coeff)}
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs=logs)


@ADAPTERS.register("cdan", CDANConfig)
def build_cdan(cfg: CDANConfig, num_classes: int, feature_dim: int) -> Adapter:
    return CDAN(cfg, num_classes, feature_dim, entropy_conditioning=False)


@ADAPTERS.register("cdan_e", CDANEConfig)
def build_cdan_e(cfg: CDANEConfig, num_classes: int, feature_dim: int) -> Adapter:
    return CDAN(cfg, num_classes, feature_dim, entropy_conditioning=True)
