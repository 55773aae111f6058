"""FixMatch (Sohn et al., NeurIPS 2020) applied to unlabelled target data: a confident prediction on a
weakly augmented view is the label for a strongly augmented view of the same image.

The weak view is the run's own training augmentation (`data.augment`; FixMatch's flip-and-shift is
`standard`), the strong view the `strong` preset (geometry + photometric jitter + cutout, our stand-in
for RandAugment + Cutout). The pseudo-label carries no gradient; only the strong view learns."""

from dataclasses import dataclass
from typing import ClassVar

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs
from .layers import confident_pseudo_labels, masked_cross_entropy


@dataclass
class FixMatchConfig:
    needs: ClassVar[Needs] = Needs(strong_view=True)
    name: str = "fixmatch"
    #: λ_u, the unlabelled loss weight (the paper: 1).
    trade_off: float = 1.0
    #: τ, the confidence a weak-view prediction needs to become a label (the paper: 0.95).
    threshold: float = 0.95


class FixMatch(Adapter):
    def __init__(self, cfg: FixMatchConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, logits_t_strong=None):
        labels, mask = confident_pseudo_labels(logits_t, self.cfg.threshold)
        transfer = masked_cross_entropy(logits_t_strong, labels, mask)
        return AdaptOutput(loss=self.cfg.trade_off * transfer, logs={"transfer_loss": transfer.detach(), "mask_rate": mask.mean()})


@ADAPTERS.register("fixmatch", FixMatchConfig)
def build_fixmatch(cfg: FixMatchConfig, num_classes: int, feature_dim: int) -> Adapter:
    return FixMatch(cfg)
