"""Datasets: one file per family. Each registers domain builders by name in DOMAINS:
`builder(argument: str, cfg: DataConfig, seed: int) -> DomainSplits`, where a domain is named in configs
as `family` or `family:argument` (e.g. `office31:amazon`)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from ..errors import ConfigError
from .base import DomainSplits, TensorImages

DomainBuilder = Callable[..., DomainSplits]
DOMAINS: dict[str, DomainBuilder] = {}


def register_domain(family: str) -> Callable[[DomainBuilder], DomainBuilder]:
    def decorator(builder: DomainBuilder) -> DomainBuilder:
        if family in DOMAINS:
            raise ValueError(f"domain family '{family}' registered twice")
        DOMAINS[family] = builder
        return builder

    return decorator


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def domain_families() -> list[str]:
    _discover()
    return sorted(DOMAINS)


def build_domain(spec: str, cfg, seed: int) -> DomainSplits:
    """Build the domain named `family[:argument]`, or raise a one-line ConfigError listing the families."""
    _discover()
    family, _, argument = spec.partition(":")
    if family not in DOMAINS:
        raise ConfigError(f"data: unknown domain '{spec}'; known families: {', '.join(sorted(DOMAINS))}")
    return DOMAINS[family](argument, cfg, seed)


__all__ = ["DOMAINS", "DomainSplits", "TensorImages", "build_domain", "domain_families", "register_domain"]
