"""Faults leave no broken state: checkpoints are complete or absent, an unreadable one is one line on
resume, and a run whose process was killed (-9) is marked KILLED by the next run of its config."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import interrupt_at_epoch, tiny_run
from mlflow.tracking import MlflowClient

from tlbench.checkpoint_io import atomic_torch_save
from tlbench.config import TrackingConfig
from tlbench.errors import WeightsError
from tlbench.processes import PROCESS_TAG
from tlbench.tracking import Store, recorded_run, unfinished_run_with_hash
from tlbench.train import train

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow

#: A process that opens a run of config "cafe", says so, and then works until it is killed.
OWNER = """
import sys, time
from pathlib import Path
from tlbench.config import TrackingConfig
from tlbench.tracking import Store, recorded_run

with recorded_run(Store.of(TrackingConfig(uri=sys.argv[1])), "owner", {"config_hash": "cafe"}) as run:
    Path(sys.argv[2]).write_text(run.run_id)
    time.sleep(600)
"""

#: Writes a 4 MB checkpoint over an existing one while the file-size limit allows only 100 kB.
FULL_DISK_WRITE = """
import resource, signal, sys, torch
from pathlib import Path
from tlbench.checkpoint_io import atomic_torch_save

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
atomic_torch_save({"w": torch.zeros(1_000_000)}, Path(sys.argv[1]))
"""


def start_owners(tmp_path, uri: str, count: int) -> list[tuple[subprocess.Popen, str]]:
    """`count` OWNER processes, started together; each with the id of the run it holds open."""
    ready = [tmp_path / f"owner{i}" for i in range(count)]
    processes = [subprocess.Popen([sys.executable, "-c", OWNER, uri, str(path)]) for path in ready]
    deadline = time.time() + 60
    while not all(p.exists() for p in ready) and time.time() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in ready), "an owner process never opened its run"
    return [(process, path.read_text()) for process, path in zip(processes, ready)]


def test_run_of_a_killed_process_is_marked_killed_by_the_next_run_of_its_config(tmp_path, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    (alive, alive_run), (killed, killed_run) = start_owners(tmp_path, mlflow_uri, 2)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert client.get_run(killed_run).info.status == "RUNNING"  # what kill -9 leaves behind

        with recorded_run(Store.of(TrackingConfig(uri=mlflow_uri)), "next", {"config_hash": "cafe"}):
            pass
        dead = client.get_run(killed_run)
        assert dead.info.status == "KILLED" and "ended without closing the run" in dead.data.tags["failure_reason"]
        assert client.get_run(alive_run).info.status == "RUNNING"  # its process is still working
        assert client.get_run(alive_run).data.tags[PROCESS_TAG].split(":")[1] == str(alive.pid)
        assert unfinished_run_with_hash(Store.of(TrackingConfig(uri=mlflow_uri)), "cafe") == killed_run  # resume takes the dead one
    finally:
        alive.kill()
        alive.wait(timeout=30)


def test_failed_checkpoint_write_keeps_the_previous_file_whole(tmp_path):
    last = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, last)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_WRITE, str(last)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert torch.load(last, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_truncated_last_checkpoint_on_resume_is_one_line(tmp_path, mlflow_uri):
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2"]), extra_callbacks=[interrupt_at_epoch(1)])
    (last,) = (tmp_path / "ckpt").glob("*/last.ckpt")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(WeightsError) as info:
        train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2", "resume=true"]))
    message = str(info.value)
    assert "\n" not in message and str(last) in message and "truncated or corrupt" in message and "resume=true" in message
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "FAILED" and "truncated or corrupt" in run.data.tags["failure_reason"]
