"""Datasets: one file per family. Each registers domain builders by name in DOMAINS:
`builder(argument: str, cfg: DataConfig, seed: int) -> DomainSplits`, where a domain is named in configs
as `family` or `family:argument` (e.g. `office31:amazon`).

A builder may read only `cfg.root`, `cfg.synthetic_size` and `cfg.image_size` (DOMAIN_FIELDS) and must
not draw from the global random generators: in-memory domains are then reused across the runs of one
sweep process (decoding Fashion-MNIST-M took 2-3 s per run), with results identical to a fresh process
(tests/test_protocol.py checks it)."""

from __future__ import annotations

import importlib
import pkgutil
from collections import OrderedDict
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


#: The data config fields a domain builder reads: with the domain name and seed, the key of a built domain.
DOMAIN_FIELDS = ("root", "synthetic_size", "image_size")
#: Built in-memory domains of this process, newest last; a few, since one sweep seldom uses more.
_BUILT: OrderedDict[tuple, DomainSplits] = OrderedDict()
KEEP_BUILT = 4


def build_domain(spec: str, cfg, seed: int) -> DomainSplits:
    """Build the domain named `family[:argument]`, or raise a one-line ConfigError listing the families."""
    from ..paths import cache_dir, data_root
    from .base import InMemoryExamples

    # The folders a builder reads from (data.root or $TLBENCH_DATA, $TLBENCH_CACHE) are part of the key.
    key = (spec, seed, str(data_root(cfg.root)), str(cache_dir()), *(getattr(cfg, field) for field in DOMAIN_FIELDS))
    if key in _BUILT:
        _BUILT.move_to_end(key)
        return _BUILT[key]
    _discover()
    family, _, argument = spec.partition(":")
    if family not in DOMAINS:
        raise ConfigError(f"data: unknown domain '{spec}'; known families: {', '.join(sorted(DOMAINS))}")
    domain = DOMAINS[family](argument, cfg, seed)
    if all(isinstance(getattr(domain, split), InMemoryExamples) for split in ("train", "val", "test")):
        _BUILT[key] = domain  # a folder streamed from disk is cheap to open and may change: built each time
        while len(_BUILT) > KEEP_BUILT:
            _BUILT.popitem(last=False)
    return domain


__all__ = ["DOMAINS", "DomainSplits", "TensorImages", "build_domain", "domain_families", "register_domain"]
