"""Registers tlbench's config-group schemas with Hydra's ConfigStore.

Hydra imports every module under `hydra_plugins` before it composes a config (CLI, compose API,
sweepers and launchers alike), so the yaml files' `defaults: [schema]` always resolve."""

from tlbench.config import register_schemas

register_schemas()
