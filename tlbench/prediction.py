"""Predictions of a trained module on raw images: the input checks that turn a wrong array into one
line, and class probabilities in eval mode. Used by the Python API and by the MLflow model flavour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .module import TransferModule


def checked_images(images: Any) -> "torch.Tensor":
    """Raw images as the model takes them, or one DataError line: N × C × H × W; uint8, or other integers
    holding 0..255 (read as uint8), or finite floats in [0, 1]. (Floats holding 0..255 would otherwise
    give quietly different probabilities.)"""
    import torch

    from .errors import DataError

    try:
        images = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"images: not an array of numbers ({str(exc).splitlines()[0]})") from None
    if images.ndim == 2 and images.dtype == torch.uint8 and min(images.shape) > 0:
        return images  # texts: zero-padded UTF-8 rows, as text domains store them (data/text.py)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or min(images.shape) == 0:
        raise DataError(f"images: expected N × C × H × W with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise DataError(f"images: expected uint8 or floats in [0, 1], got {images.dtype}")
    if images.is_floating_point():
        if not torch.isfinite(images).all():
            raise DataError("images: NaN or infinite values")
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 1:
            raise DataError(f"images: float images must lie in [0, 1], got {low:g}..{high:g} (divide 0..255 values by 255, or pass uint8)")
        return images
    if images.dtype != torch.uint8:
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 255:
            raise DataError(f"images: integer images must lie in 0..255, got {low}..{high}")
        images = images.to(torch.uint8)
    return images


def predict(module: "TransferModule", images: "torch.Tensor", domain: str = "target", batch_size: int = 256) -> "torch.Tensor":
    """Class probabilities (N × classes) for raw images (N × C × H × W, uint8 or floats in [0, 1]; see
    checked_images), with the module in eval mode; `domain` picks the BatchNorm copy of a
    batch_composition=domain_bn model."""
    import torch

    from .domain_bn import batchnorm_domain

    images = checked_images(images)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), batchnorm_domain(module, domain):
            device = next(module.parameters()).device
            return torch.cat([module(chunk.to(device)).softmax(1).cpu() for chunk in images.split(batch_size)])
    finally:
        module.train(was_training)
