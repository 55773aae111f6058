"""Test environment: caches and MLflow stores in temp dirs, offline, and small thread counts. Shared
helpers (tiny runs, compose, config paths) live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest


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
