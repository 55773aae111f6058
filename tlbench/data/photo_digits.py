"""`photo_digits`: font-rendered digits blended with colour photos the way MNIST-M is built from MNIST —
the third domain of Digits-3, tlbench's small natural-shift domain-generalisation set (font digits
`synthetic_digits`, real handwritten `sklearn_digits`, and these), all offline.

The digits are a different draw from `synthetic_digits` (generation seed 1 by default, so no image is
shared), upsampled from the 8×8 optdigits reduction to 28×28 and blended with patches of the colour photos
that ship inside scikit-learn and scikit-image: 3×28×28.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import register_domain
from .base import DomainSplits
from .digits import SOURCE_SPLIT, _splits, cached_synthetic_digits, to_uint8
from .fashion import _read_rgb, blend_with_photos, bundled_photo_paths

SIZE = 28


def upsampled(images: torch.Tensor, size: int) -> np.ndarray:
    """N×1×h×w uint8 → N×size×size uint8 (bilinear)."""
    big = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()


@register_domain("photo_digits")
def photo_digits(argument: str, cfg, seed: int) -> DomainSplits:
    """Font digits on colour photos, 3×28×28; `argument` (optional) is the generation seed, default 1."""
    generation = int(argument or 1)
    counts, labels = cached_synthetic_digits(cfg.synthetic_size, generation)
    gray = upsampled(to_uint8(counts), SIZE)
    colour = blend_with_photos(gray, [_read_rgb(p) for p in bundled_photo_paths()], generation)
    return _splits("photo_digits", torch.from_numpy(colour), labels, SOURCE_SPLIT, seed=0)
