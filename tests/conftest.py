"""Test environment: caches and MLflow stores in temp dirs, offline, and small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tlbench_cache")
    os.environ["TLBENCH_CACHE"] = str(cache)
    os.environ["TLBENCH_OFFLINE"] = "1"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def compose(overrides: list[str] | None = None):
    """The root config as `tlbench` would compose it (Hydra's compose API on conf/)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [], return_hydra_config=False)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
