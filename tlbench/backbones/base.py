"""What every backbone offers the rest of tlbench: ordered stages, a feature size, and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """Input contract of a backbone, taken from its weights' metadata (ImageNet mean/std for ImageNet)."""

    input_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float batch (N,C,H,W) of any size/channels → normalised float batch for the backbone.

        Runs on the batch's device, so resizing and normalising happen on the GPU when there is one.
        """
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif self.in_chans == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"cannot map {x.shape[1]} input channels to {self.in_chans}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


class Backbone(nn.Module):
    """A feature extractor split into ordered stages (stem → … → last block).

    Subclasses set `stage_modules` (an nn.ModuleList whose members together own every parameter, in
    forward order), `out_features` and `preprocessing`, and implement `forward(x) -> (N, out_features)`.
    Freezing schedules act on stages only, so any backbone gets every schedule.
    """

    out_features: int
    preprocessing: Preprocessing
    stage_modules: nn.ModuleList

    def stages(self) -> list[nn.Module]:
        return list(self.stage_modules)

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        return [list(stage.parameters()) for stage in self.stage_modules]
