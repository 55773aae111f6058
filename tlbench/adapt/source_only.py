"""Source only (ERM): the no-adaptation baseline every method is compared against."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class SourceOnlyConfig:
    needs: ClassVar[Needs] = Needs(target=False)
    name: str = "source_only"


class SourceOnly(Adapter):
    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        return AdaptOutput(loss=torch.zeros((), device=logits_s.device))


@ADAPTERS.register("source_only", SourceOnlyConfig)
def build_source_only(cfg: SourceOnlyConfig, num_classes: int, feature_dim: int) -> Adapter:
    return SourceOnly()
