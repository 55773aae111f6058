"""Domain-adaptation methods: one file per method, each registers itself in ADAPTERS."""

from ..registry import Registry
from .base import Adapter, AdaptOutput

ADAPTERS: Registry[Adapter] = Registry("adapt", package=__name__)

__all__ = ["ADAPTERS", "AdaptOutput", "Adapter"]
