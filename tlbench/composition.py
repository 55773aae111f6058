"""From overrides to a run's config, exactly as the `tlbench` command composes it: Hydra composition
(`compose_config`, the root DictConfig) and the validated RunConfig (`compose`). The config layer: the
command line, the Python API, search, rank and the tests all start here."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from .config import RunConfig, validate
from .paths import CONFIG_DIR


def compose_config(overrides: Sequence[str] | None = None) -> DictConfig:
    """The root config exactly as `tlbench <overrides>` composes it, for Python callers and tests.
    A mistake in the overrides raises a ConfigError with the one line the CLI would print."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from .errors import ConfigError
    from .user_errors import describe_hydra_error

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            return hydra_compose(config_name="config", overrides=list(overrides or []))
        except HydraException as exc:
            line = describe_hydra_error(exc, list(overrides or []))
            if line is None:
                raise
            raise ConfigError(line) from None


def compose(overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config of `tlbench <overrides>` (same Hydra composition, same checks)."""
    return validate(compose_config(list(overrides)))
