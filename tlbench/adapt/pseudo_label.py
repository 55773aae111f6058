"""Pseudo-labelling (Lee 2013), confidence-thresholded: the network's own confident target predictions
become training labels. The simplest self-training baseline: no extra parameters, no second view.

Its weight ramps up from 0 (Ganin's schedule) because early predictions are mostly wrong; only
predictions with top probability ≥ `threshold` count, so the loss grows as the model grows confident."""

from dataclasses import dataclass

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .layers import confident_pseudo_labels, masked_cross_entropy


@dataclass
class PseudoLabelConfig:
    name: str = "pseudo_label"
    trade_off: float = 1.0
    #: Minimum top softmax probability for a target prediction to become a label.
    threshold: float = 0.9
    #: Ramp the weight from 0 with 2/(1+exp(-10p))-1 over training progress p.
    ramp: bool = True


class PseudoLabel(Adapter):
    def __init__(self, cfg: PseudoLabelConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        labels, mask = confident_pseudo_labels(logits_t, self.cfg.threshold)
        transfer = masked_cross_entropy(logits_t, labels, mask)
        weight = self.weight(progress)
        return AdaptOutput(loss=weight * transfer, logs={"transfer_loss": transfer.detach(), "mask_rate": mask.mean()})


@ADAPTERS.register("pseudo_label", PseudoLabelConfig)
def build_pseudo_label(cfg: PseudoLabelConfig, num_classes: int, feature_dim: int) -> Adapter:
    return PseudoLabel(cfg)
