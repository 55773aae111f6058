"""A multi-process (DDP) run is one MLflow run: only rank 0 creates and writes it; before, every rank
created its own (trainer.devices=7 on CPU left 7 FAILED runs)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import TINY

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow


def test_two_cpu_processes_with_ddp_record_one_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        *[o for o in TINY if not o.startswith("trainer.max_epochs")],
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"tracking.uri={uri}",
        f"checkpoint_dir={tmp_path / 'ckpt'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", *args], cwd=tmp_path, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    connection = sqlite3.connect(tmp_path / "mlflow.db")
    runs = connection.execute("select status from runs").fetchall()
    metrics = connection.execute("select count(distinct key) from latest_metrics").fetchone()[0]
    connection.close()
    assert runs == [("FINISHED",)], runs
    assert metrics > 3  # rank 0's logger wrote the run's metrics
