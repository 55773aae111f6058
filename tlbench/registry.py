"""Name → (typed schema, factory) registries, one per config group.

Configs pick an implementation by a key field (`name`; `family` for backbones, whose `name` is the
display name such as resnet18 while the family is torchvision); the registry validates the group's node against the
implementation's dataclass schema (unknown key or wrong type → ConfigError naming the key) and builds
it. This replaces `_target_` strings, so a user config can only instantiate tlbench's own classes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError, one_line

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    schema: type
    factory: Callable[..., T]


class Registry(Generic[T]):
    def __init__(self, group: str, package: str | None = None, key: str = "name"):
        self.group = group
        #: The config field that picks the implementation.
        self.key = key
        self._package = package  # imported lazily so every file in it registers itself
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, schema: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if not dataclasses.is_dataclass(schema):
            raise TypeError(f"schema for {self.group}/{name} must be a dataclass")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' registered twice")
            self._entries[name] = Entry(name, schema, factory)
            return factory

        return decorator

    def _discover(self) -> None:
        if self._package is None:
            return
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")
        self._package = None

    def choices(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        self._discover()
        if name not in self._entries:
            raise ConfigError(f"{self.group}.{self.key}: unknown {self.group} '{name}'; choose one of: {', '.join(self.choices())}")
        return self._entries[name]

    def validate(self, node: Any) -> Any:
        """Return the typed dataclass instance for a config node, or raise a one-line ConfigError."""
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        if not isinstance(node, dict) or self.key not in node:
            raise ConfigError(f"{self.group}: expected a mapping with a '{self.key}' key, got {node!r}")
        entry = self.entry(str(node[self.key]))
        try:
            merged = OmegaConf.merge(OmegaConf.structured(entry.schema), node)
            return OmegaConf.to_object(merged)
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_omegaconf_error(self.group, entry.schema, exc)) from None

    def build(self, node: Any, **runtime: Any) -> T:
        """The implementation of `node`, given the runtime facts (sizes known once data and backbone exist)
        that its factory asks for by name; a factory does not have to take every fact a caller offers."""
        typed = node if dataclasses.is_dataclass(node) else self.validate(node)
        factory = self.entry(getattr(typed, self.key)).factory
        wanted = inspect.signature(factory).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in wanted.values()):
            runtime = {k: v for k, v in runtime.items() if k in wanted}
        return factory(typed, **runtime)


def describe_omegaconf_error(group: str, schema: type, exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    reason = one_line(exc, limit=400)
    if "not in struct" in reason or "Key '" in reason and "not" in reason:
        from .suggestions import unknown_key

        names = [f.name for f in dataclasses.fields(schema)]
        return unknown_key(f"{group}.{key}", names, f"{group} '{getattr(schema, '__name__', schema)}'")
    return f"{group}.{key}: {reason}"
