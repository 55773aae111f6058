"""Backbones: one file per family; each registers its names in BACKBONES."""

from ..registry import Registry
from .base import Backbone, Preprocessing

BACKBONES: Registry[Backbone] = Registry("backbone", package=__name__)

__all__ = ["BACKBONES", "Backbone", "Preprocessing"]
