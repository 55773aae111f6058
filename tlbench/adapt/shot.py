"""SHOT (Liang, Hu & Feng, ICML 2020): source-free adaptation. Start from a source-trained model, keep
its classifier (the "source hypothesis") fixed, and train the feature extractor on unlabelled target
data alone with

- information maximisation: confident predictions (low mean entropy) that are diverse across the batch
  (high entropy of the mean prediction), so the features do not collapse onto a few classes;
- self-supervised pseudo-labels from clustering: at the start of every epoch, class centroids are the
  softmax-weighted means of the target features, each example goes to its nearest centroid (cosine),
  then centroids are recomputed from those labels and examples reassigned once more.

The run never sees source data: the datamodule yields no source batch (see data/datamodule.py), and
the source model comes from a recorded run (`source_model`, loaded by tlbench/source_model.py).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class ShotConfig:
    needs: ClassVar[Needs] = Needs(source=False, target_index=True, frozen_head=True)
    name: str = "shot"
    #: The source model: `runs:/<run_id>`, or the name of a method (e.g. source_only) whose finished run
    #: with the same seed, source domain, backbone and head in this experiment is the source model.
    source_model: str = ""
    #: Weight of the information-maximisation loss (the paper's `ent_par`: 1.0).
    trade_off: float = 1.0
    #: Weight of the pseudo-label cross-entropy (the paper's `cls_par`: 0.3 on Office, 0.1 on digits).
    pseudo_label_weight: float = 0.3
    #: Subtract the entropy of the batch's mean prediction (the diversity term); false = entropy only.
    diversity: bool = True
    #: Centroid refinement rounds after the softmax-weighted start (the paper: 1).
    rounds: int = 1
    epsilon: float = 1e-5


def information_maximization(logits: torch.Tensor, diversity: bool = True, epsilon: float = 1e-5) -> torch.Tensor:
    """Mean prediction entropy minus the entropy of the mean prediction (SHOT's L_ent + L_div)."""
    probabilities = logits.softmax(dim=1)
    conditional = -(probabilities * torch.log(probabilities + epsilon)).sum(dim=1).mean()
    if not diversity:
        return conditional
    mean = probabilities.mean(dim=0)
    return conditional - (-(mean * torch.log(mean + epsilon)).sum())


def _nearest(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the centroid with the smallest cosine distance to each (unit-length) feature row."""
    return (features @ F.normalize(centroids, dim=1).T).argmax(dim=1)


@torch.no_grad()
def centroid_pseudo_labels(features: torch.Tensor, logits: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """SHOT's clustering labels for all target examples (N × d features, N × K logits).

    Features get a constant 1 appended and are L2-normalised; only classes that are some example's
    argmax prediction keep a centroid (a class nobody predicts cannot attract examples)."""
    probabilities = logits.float().softmax(dim=1)
    classes = probabilities.shape[1]
    features = F.normalize(torch.cat([features.float(), features.new_ones(len(features), 1)], dim=1), dim=1)
    present = torch.nonzero(torch.bincount(probabilities.argmax(dim=1), minlength=classes) > 0).squeeze(1)
    weights = probabilities
    labels = None
    for _ in range(rounds + 1):
        centroids = weights.T @ features / (1e-8 + weights.sum(dim=0)[:, None])
        labels = present[_nearest(features, centroids[present])]
        weights = F.one_hot(labels, classes).float()
    return labels


class Shot(Adapter):
    def __init__(self, cfg: ShotConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pseudo_labels", torch.empty(0, dtype=torch.long), persistent=False)

    def before_epoch(self, module, target_batches) -> None:
        """Label every target example by clustering the current model's features (model in eval mode)."""
        training = module.training
        module.eval()
        features, logits = [], []
        with torch.no_grad():
            for images in target_batches:
                batch_features = module.features(images)
                features.append(batch_features)
                logits.append(module.head(batch_features))
        module.train(training)
        self.pseudo_labels = centroid_pseudo_labels(torch.cat(features), torch.cat(logits), self.cfg.rounds)

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, target_index=None):
        im = information_maximization(logits_t, self.cfg.diversity, self.cfg.epsilon)
        loss = self.cfg.trade_off * im
        logs = {"transfer_loss": im.detach()}
        if self.cfg.pseudo_label_weight > 0:
            if len(self.pseudo_labels) == 0:
                raise RuntimeError("shot: no pseudo-labels; before_epoch must run at the start of each epoch")
            targets = self.pseudo_labels[target_index.to(self.pseudo_labels.device)]
            pseudo_ce = F.cross_entropy(logits_t, targets)
            loss = loss + self.cfg.pseudo_label_weight * pseudo_ce
            logs["pseudo_ce"] = pseudo_ce.detach()
            logs["pseudo_agreement"] = (logits_t.detach().argmax(dim=1) == targets).float().mean()
        return AdaptOutput(loss=loss, logs=logs)


@ADAPTERS.register("shot", ShotConfig)
def build_shot(cfg: ShotConfig, num_classes: int, feature_dim: int) -> Adapter:
    """A missing `source_model` is refused where the plan resolves it (source_model.source_run_id)."""
    return Shot(cfg)
