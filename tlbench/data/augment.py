"""Training-time augmentation on whole batches, on the batch's device (no PIL, no per-sample Python).

Every preset maps a uint8 or float [0,1] batch N×C×H×W to float [0,1] of the same shape. Each sample
draws its own parameters from torch's global generator, so `torch.manual_seed` makes a run repeatable;
geometry for the whole batch is one `affine_grid` + `grid_sample`.

- `none`: only the conversion to float.
- `standard`: small images (side < 64, e.g. digits, CIFAR) are shifted by up to 1/8 of the side in
  whole pixels with zero fill (pad-and-crop); larger ones get a random-resized crop (25–100 % of the
  area, aspect 3/4–4/3). Horizontal flip with p=0.5, only when the domain says flips keep labels.
- `strong` (RandAugment-like): standard, then each with p=0.5 a rotation (±20°), a translation (±12.5 %),
  brightness (×0.6–1.4) and contrast (×0.6–1.4) change, and always a cutout square of 1/3 of the side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

PRESETS = ("none", "standard", "strong")
LARGE_SIDE = 64


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float 0..1; float batches are taken to be in [0,1] already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def _coin(n: int, device, p: float = 0.5) -> torch.Tensor:
    return torch.rand(n, device=device) < p


@dataclass(frozen=True)
class Geometry:
    """Per-sample random affine warp parameters (fractions refer to the image side)."""

    crop_area: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    shift: float = 0.0  # pad-and-crop, rounded to whole pixels
    degrees: float = 0.0  # applied to a random half of the samples
    translate: float = 0.0  # applied to a random half of the samples
    flip: bool = False

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        dev = x.device
        area = _uniform(n, *self.crop_area, dev)
        ratio = torch.exp(_uniform(n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), dev))
        crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
        crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
        # Normalised coordinates span 2 units per side: a crop of relative width w can move by ±(1 − w).
        cx = _uniform(n, -1.0, 1.0, dev) * (1 - crop_w)
        cy = _uniform(n, -1.0, 1.0, dev) * (1 - crop_h)
        if self.shift:
            max_px = max(1, round(self.shift * min(height, width)))
            cx = cx + torch.randint(-max_px, max_px + 1, (n,), device=dev) * (2.0 / width)
            cy = cy + torch.randint(-max_px, max_px + 1, (n,), device=dev) * (2.0 / height)
        if self.translate:
            moved = _coin(n, dev)
            cx = cx + moved * _uniform(n, -2 * self.translate, 2 * self.translate, dev)
            cy = cy + moved * _uniform(n, -2 * self.translate, 2 * self.translate, dev)
        angle = torch.zeros(n, device=dev)
        if self.degrees:
            angle = _coin(n, dev) * _uniform(n, -self.degrees, self.degrees, dev) * (math.pi / 180)
        mirror = torch.where(_coin(n, dev), -1.0, 1.0) if self.flip else torch.ones(n, device=dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input = D⁻¹·R·D · diag(w·mirror, h) · output + c, with D = diag(W, H)/2 keeping rotation rigid on non-square images.
        theta = torch.stack(
            [
                torch.stack([cos * crop_w * mirror, -sin * crop_h * (height / width), cx], dim=1),
                torch.stack([sin * crop_w * mirror * (width / height), cos * crop_h, cy], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def photometric(x: torch.Tensor, strength: float = 0.4) -> torch.Tensor:
    """Brightness and contrast, each applied with p=0.5 per sample."""
    n, dev = x.shape[0], x.device
    brightness = torch.where(_coin(n, dev), _uniform(n, 1 - strength, 1 + strength, dev), torch.ones(n, device=dev))
    contrast = torch.where(_coin(n, dev), _uniform(n, 1 - strength, 1 + strength, dev), torch.ones(n, device=dev))
    x = x * brightness.view(n, 1, 1, 1).to(x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.view(n, 1, 1, 1).to(x.dtype) + mean).clamp_(0.0, 1.0)


def cutout(x: torch.Tensor, fraction: float = 1 / 3, fill: float = 0.5) -> torch.Tensor:
    """One square of side `fraction`·side per sample, centred anywhere (so it may be partly outside)."""
    n, _, height, width = x.shape
    dev = x.device
    half = max(1, round(fraction * min(height, width))) / 2
    cy = torch.randint(0, height, (n, 1, 1), device=dev)
    cx = torch.randint(0, width, (n, 1, 1), device=dev)
    rows = torch.arange(height, device=dev).view(1, -1, 1)
    cols = torch.arange(width, device=dev).view(1, 1, -1)
    mask = ((rows - cy).abs() < half) & ((cols - cx).abs() < half)
    return x.masked_fill(mask.unsqueeze(1), fill)


class Augmentation:
    """A preset bound to whether horizontal flips are label-preserving for the domain."""

    def __init__(self, preset: str, hflip_ok: bool):
        if preset not in PRESETS:
            raise ConfigError(f"data.augment: '{preset}' is not allowed; choose one of: {', '.join(PRESETS)}")
        self.preset = preset
        self.hflip_ok = hflip_ok

    def geometry(self, side: int) -> Geometry:
        if side >= LARGE_SIDE:
            base = Geometry(crop_area=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=self.hflip_ok)
        else:
            base = Geometry(shift=1 / 8, flip=self.hflip_ok)
        if self.preset == "strong":
            return Geometry(base.crop_area, base.crop_ratio, base.shift, degrees=20.0, translate=0.125, flip=self.hflip_ok)
        return base

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 2:  # UTF-8 text rows (data/text.py): no image transform means anything for them
            raise ConfigError(
                f"data.augment={self.preset}: augmentations are for images and this batch holds texts; "
                "use data.augment=none (and no method that needs a strong image view, such as fixmatch)"
            )
        x = to_unit_float(images)
        if self.preset == "none" or x.shape[0] == 0:
            return x
        x = self.geometry(min(x.shape[-2:])).warp(x)
        if self.preset == "strong":
            x = cutout(photometric(x))
        return x.clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Augmentation({self.preset!r}, hflip_ok={self.hflip_ok})"


def build_augmentation(preset: str, hflip_ok: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    return Augmentation(preset, hflip_ok)
