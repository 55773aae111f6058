"""Backbones: one file per family; each registers its family in BACKBONES."""

from ..registry import Registry
from .base import Backbone, Preprocessing

#: Keyed by `family` (torchvision, timm, small_cnn, ...); a backbone's `name` is its display name.
BACKBONES: Registry[Backbone] = Registry("backbone", package=__name__, key="family")

__all__ = ["BACKBONES", "Backbone", "Preprocessing"]
