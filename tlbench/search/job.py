"""What a search is and where it lives: the job description, its Optuna storage (with the SQLite
locking fix) and how trials compose their configs. Shared by the other search modules."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError, TlbenchError
from ..tracking import masked  # noqa: F401  (re-exported: the search modules mask storage URLs too)
from .space import SearchSpace

log = logging.getLogger("tlbench.search")


#: Study user attrs written by tlbench.
ATTR_N_TRIALS = "tlbench.n_trials"


ATTR_PARENT = "tlbench.mlflow_parent_run_id"


#: What a study searches: its space's parameters and the fixed overrides. A resume must match it.
ATTR_DEFINITION = "tlbench.definition"


#: Longest wait of a process joining a study for the MLflow parent run its creator opens.
PARENT_WAIT_S = 60


class SearchError(TlbenchError):
    """A search that cannot go on (e.g. workers died with trials still queued)."""

    exit_code = 1


@dataclass
class SearchJob:
    """Everything a worker needs; plain data, so spawned worker processes receive it pickled."""

    space: SearchSpace
    #: Overrides every trial gets (space overrides, then the command line).
    fixed: list[str]
    config_dir: str
    config_name: str
    storage: str
    study_name: str
    n_trials: int
    monitor: str
    mode: str
    tracking_uri: str
    experiment: str
    out_dir: str
    max_epochs: int
    #: The config's tracking.tags (the parent run gets them too; trials get them from their config).
    tracking_tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str = ""
    #: Extra MLflow tags for every trial (the Hydra sweeper adds sweep_dir).
    extra_tags: dict[str, str] = field(default_factory=dict)
    #: Seconds between looks at the queue while other workers' trials are still running.
    poll_s: float = 2.0
    #: In the Hydra sweeper's own process: compose through the running app's config loader (its search
    #: path and hydra overrides). Not sent to worker processes, which compose from config_dir.
    composer: Optional[Callable[[list[str]], Any]] = field(default=None, compare=False, repr=False)

    @property
    def direction(self) -> str:
        return "maximize" if self.mode == "max" else "minimize"


# ----------------------------------------------------------------------------- config and storage
def compose(target, overrides: list[str]):
    """The run config for these overrides, composed as `tlbench` composes it (`target` has config_dir
    and config_name: a SearchJob or a ConfigSource)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if getattr(target, "composer", None) is not None:
            return target.composer(list(overrides))
        with initialize_config_dir(config_dir=target.config_dir, version_base="1.3", job_name="tlbench_search"):
            return hydra_compose(config_name=target.config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


@dataclass
class ConfigSource:
    config_dir: str
    config_name: str = "config"
    composer: Optional[Callable[[list[str]], Any]] = None


def default_storage() -> str:
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def absolute_storage(url: str) -> str:
    """A relative SQLite path made absolute, so every worker opens the same file whatever its cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and url[len(prefix) :] not in ("", ":memory:"):
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url
