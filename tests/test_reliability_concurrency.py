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
from tlbench.tracking import Store, recorded_run

uri, go, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
Path(str(go) + "." + name).touch()
while not go.exists():
    time.sleep(0.005)
with recorded_run(Store.of(TrackingConfig(uri=uri)), name, {"worker": name}) as run:
    run.log_metrics({"x": 1.0}, step=0)
"""


CLAIMER = """
import sys, time
from pathlib import Path
from tlbench.config import TrackingConfig
from tlbench.tracking import ClaimedElsewhere, Store, recorded_run

uri, go, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
Path(str(go) + "." + name).touch()
while not go.exists():
    time.sleep(0.005)
try:
    with recorded_run(Store.of(TrackingConfig(uri=uri)), name, {"config_hash": "same"}, claim=True) as run:
        time.sleep(2.0)  # training: the others start meanwhile
        run.log_metrics({"x": 1.0}, step=0)
    print("trained")
except ClaimedElsewhere as claimed:
    print("left to", claimed.run_id)
"""


def _start_together(tmp_path, script: str, uri: str, names: list[str]) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, uri, str(go), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"go.{name}").exists() for name in names) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    return processes


def test_identical_configurations_started_together_are_trained_once(tmp_path):
    """skip_done sweeps started together claim each configuration: the first run holds it, the others
    delete their new run again and skip, naming the run that trains."""
    db = tmp_path / "mlflow.db"
    with recorded_run_store(db):
        pass
    names = [f"sweep{i}" for i in range(4)]
    outputs = [p.communicate(timeout=120) for p in _start_together(tmp_path, CLAIMER, f"sqlite:///{db}", names)]
    printed = [out.strip() for out, _ in outputs]
    assert sorted(p.split()[0] for p in printed) == ["left", "left", "left", "trained"], outputs
    with sqlite3.connect(db) as connection:
        active = connection.execute("select run_uuid, status from runs where lifecycle_stage = 'active' and name != 'setup'").fetchall()
    assert len(active) == 1 and active[0][1] == "FINISHED"
    assert all(p.endswith(active[0][0]) for p in printed if p.startswith("left"))


def recorded_run_store(db):
    """The store made once beforehand (its creation is another test's subject)."""
    from tlbench.config import TrackingConfig
    from tlbench.tracking import Store, recorded_run

    return recorded_run(Store.of(TrackingConfig(uri=f"sqlite:///{db}")), "setup", {"config_hash": "other"})


def test_four_processes_creating_a_new_store_at_once_all_record_their_run(tmp_path):
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    names = [f"worker{i}" for i in range(4)]
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, f"sqlite:///{db}", str(go), name], stderr=subprocess.PIPE, text=True) for name in names]
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


def test_a_killed_joblib_worker_stops_the_sweep_in_one_line_and_leaves_nothing_running(tmp_path, mlflow_uri):
    """SIGKILL one worker mid-run: one error line (not joblib's TerminatedWorkerError traceback), exit 1, the
    parent FAILED and no child left RUNNING."""
    import os
    import signal

    from helpers import TINY
    from mlflow.tracking import MlflowClient

    from tlbench.processes import PROCESS_TAG

    command = [
        sys.executable,
        "-m",
        "tlbench",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "trainer.max_epochs=300",
        f"tracking.uri={mlflow_uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
        "seed=0,1,2,3",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    sweep = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    client = MlflowClient(mlflow_uri)
    deadline = time.time() + 180
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(1)
        try:
            experiment = client.get_experiment_by_name("tlbench")
            running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        except Exception:
            continue
        owned = [r for r in running if "tlbench.parent" not in r.data.tags and r.data.tags.get(PROCESS_TAG)]
        if owned:
            victim = int(owned[0].data.tags[PROCESS_TAG].split(":")[1])
    assert victim is not None, "no job started"
    os.kill(victim, signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=180)
    assert sweep.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "TerminatedWorkerError" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("tlbench: error:")] == [
        line for line in stderr.splitlines() if "worker process of the sweep died" in line
    ]
    runs = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
    (parent,) = [r for r in runs if r.data.tags.get("tlbench.parent") == "sweep"]
    assert parent.info.status == "FAILED"


def test_identical_skip_done_sweeps_started_together_both_succeed_and_train_each_point_once(tmp_path):
    """Two `tlbench -m seed=0,1 tracking.skip_done=true` at once: each configuration trains once, neither
    process deletes the other's checkpoints (its folder is cleared only after the claim), both exit 0."""
    from helpers import TINY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "tlbench", "-m", *TINY, "trainer.max_epochs=1", f"tracking.uri={uri}", "seed=0,1", "tracking.skip_done=true"]
    processes = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[-2000:] for o in outputs]
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        trained = connection.execute(
            "select count(*) from runs where status = 'FINISHED' and lifecycle_stage = 'active' "
            "and run_uuid not in (select run_uuid from tags where key = 'tlbench.parent')"
        ).fetchone()[0]
        running = connection.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    assert trained == 2 and running == 0
