"""Processes that start together on a new SQLite store all record their runs: the store's creation and
schema migration happen under a file lock, one process at a time."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow

#: Imports first, then waits for the `go` file so that every process opens the new store at once.
WORKER = """
import sys, time
from pathlib import Path
from tlbench.config import TrackingConfig
from tlbench.tracking import recorded_run

uri, go, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
Path(str(go) + "." + name).touch()
while not go.exists():
    time.sleep(0.005)
with recorded_run(TrackingConfig(uri=uri), name, {"worker": name}) as run:
    run.log_metrics({"x": 1.0}, step=0)
"""


def test_four_processes_creating_a_new_store_at_once_all_record_their_run(tmp_path):
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    names = [f"worker{i}" for i in range(4)]
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER, f"sqlite:///{db}", str(go), name], stderr=subprocess.PIPE, text=True)
        for name in names
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"go.{name}").exists() for name in names) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n".join(errors)
    with sqlite3.connect(db) as connection:
        runs = connection.execute("select name, status from runs order by name").fetchall()
        leftovers = connection.execute("select name from sqlite_master where name like '_alembic_tmp%'").fetchall()
    assert runs == [(name, "FINISHED") for name in names]
    assert leftovers == []
