"""Faults lose nothing: interrupted runs are KILLED with a checkpoint and resume to the same result;
the same config and seed give identical metrics; cached features give the uncached results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY, interrupt_at_epoch, tiny_run
from mlflow.tracking import MlflowClient

from tlbench.train import train

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow


def _history(client, run_id, name):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]


def test_same_config_and_seed_give_identical_metrics(tmp_path, mlflow_uri):
    first = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2", "adapt=dann", "head.dropout=0.2"]))
    second = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2", "adapt=dann", "head.dropout=0.2"]))
    client = MlflowClient(mlflow_uri)
    assert first["test/target_acc"] == second["test/target_acc"]
    assert _history(client, first["run_id"], "train/loss") == _history(client, second["run_id"], "train/loss")
    other_seed = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2", "adapt=dann", "head.dropout=0.2", "seed=1"]))
    assert _history(client, other_seed["run_id"], "train/loss") != _history(client, first["run_id"], "train/loss")


def test_interrupted_run_is_killed_and_resumes_to_the_uninterrupted_result(tmp_path, mlflow_uri):
    epochs = ["trainer.max_epochs=3", "head.dropout=0.2"]
    reference = train(tiny_run(tmp_path / "ref", mlflow_uri, epochs + ["tracking.experiment=reference"]))

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(tiny_run(tmp_path, mlflow_uri, epochs), extra_callbacks=[interrupt_at_epoch(2)])
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tlbench").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "KILLED" and killed.data.tags["failure_reason"] == "interrupted"
    assert (tmp_path / "ckpt" / killed.data.tags["config_hash"] / "last.ckpt").exists()

    resumed = train(tiny_run(tmp_path, mlflow_uri, epochs + ["resume=true"]))
    assert resumed["run_id"] == killed.info.run_id  # the same MLflow run continues
    finished = client.get_run(killed.info.run_id)
    assert finished.info.status == "FINISHED" and "failure_reason" not in finished.data.tags  # why it stopped once, not now
    for name in ("test/target_acc", "test/source_acc", "selected_epoch"):
        assert resumed[name] == pytest.approx(reference[name], abs=1e-6), name
    assert [v for _, v in _history(client, resumed["run_id"], "val/source_acc")] == pytest.approx(
        [v for _, v in _history(client, reference["run_id"], "val/source_acc")]
    )


def test_sigterm_marks_the_run_killed(tmp_path, mlflow_uri):
    command = [
        sys.executable,
        "-m",
        "tlbench",
        *TINY,
        "trainer.max_epochs=200",
        f"tracking.uri={mlflow_uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
        f"hydra.run.dir={tmp_path}/run",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(mlflow_uri)
    deadline = time.time() + 120
    run = None
    while time.time() < deadline:
        time.sleep(1)
        experiment = client.get_experiment_by_name("tlbench") if os.path.exists(tmp_path / "mlflow.db") else None
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and "val/source_acc" in runs[0].data.metrics:
            run = runs[0]
            break
    assert run is not None, "the run never finished an epoch"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "KILLED", stderr[-3000:]
    assert (tmp_path / "ckpt" / run.data.tags["config_hash"] / "last.ckpt").exists()


def test_feature_cache_gives_the_uncached_results(tmp_path, mlflow_uri):
    probe = ["freeze=linear_probe", "trainer.max_epochs=2", "head.dropout=0.0", "adapt=dann"]
    cached = train(tiny_run(tmp_path, mlflow_uri, probe))
    uncached = train(tiny_run(tmp_path, mlflow_uri, probe + ["trainer.feature_cache=false"]))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(cached["run_id"]).data.tags["feature_cache"] == "on"
    assert client.get_run(uncached["run_id"]).data.tags["feature_cache"].startswith("off")
    for name in ("test/target_acc", "test/source_acc", "test/target_loss"):
        assert cached[name] == pytest.approx(uncached[name], abs=1e-4), name
    # invalid settings fall back to the uncached path and say why
    augmented = train(tiny_run(tmp_path, mlflow_uri, probe + ["data.augment=standard"]))
    assert "augment" in client.get_run(augmented["run_id"]).data.tags["feature_cache"]
    adabn = train(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", "trainer.max_epochs=1", "adapt=adabn"]))
    assert "changes the backbone before evaluation" in client.get_run(adabn["run_id"]).data.tags["feature_cache"]


def test_unreachable_tracking_server_fails_fast_with_one_line(tmp_path):
    """A tracking URI nobody answers: a clear error well within 30 s, nothing trains."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens on this port now
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", *TINY, f"tracking.uri=http://127.0.0.1:{port}", "tracking.timeout_s=5", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert time.time() - started < 30
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlbench: error:")]
    assert len(errors) == 1 and "cannot reach MLflow server" in errors[0]


def test_a_database_store_at_a_closed_port_fails_within_the_timeout_in_one_line():
    """MLflow alone retries a refused PostgreSQL connection for about two minutes, then raises a traceback."""
    import socket

    from tlbench.tracking import TrackingError, client_for

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    started = time.time()
    with pytest.raises(TrackingError) as caught:
        client_for(f"postgresql://user:secret@127.0.0.1:{port}/db", timeout_s=3)
    assert time.time() - started < 15
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message and "tracking.timeout_s=3" in message


def test_skip_done_reruns_nothing_that_finished(tmp_path, mlflow_uri):
    """A restarted sweep with tracking.skip_done=true skips finished configs and runs the rest."""
    first = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1"]))
    again = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1", "tracking.skip_done=true"]))
    other = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1", "tracking.skip_done=true", "seed=5"]))
    assert again == {"skipped": 1.0, "run_id": first["run_id"]} and "run_id" in other
    client = MlflowClient(mlflow_uri)
    assert len(client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])) == 2


def test_runs_and_sweep_parents_left_running_by_a_dead_process_are_closed_by_the_next_run(tmp_path, mlflow_uri):
    """A store that went away mid-sweep leaves a job's run and the sweep's parent RUNNING; the next command
    against the store (any configuration) closes both as KILLED."""
    from tlbench.processes import PROCESS_TAG

    dead = subprocess.Popen([sys.executable, "-c", "import os, socket; print(socket.gethostname(), os.getpid())"], stdout=subprocess.PIPE, text=True)
    host, pid = dead.communicate()[0].split()
    token = f"{host}:{pid}:"  # its start time unknown: the pid alone says it is gone
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("tlbench")
    job = client.create_run(experiment, tags={PROCESS_TAG: token, "config_hash": "another"}).info.run_id
    parent = client.create_run(experiment, tags={PROCESS_TAG: token, "tlbench.parent": "sweep"}).info.run_id
    alive = client.create_run(experiment, tags={"tlbench.parent": "sweep"}).info.run_id  # no owner known: left alone
    train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1"]))
    assert client.get_run(job).info.status == "KILLED" and client.get_run(parent).info.status == "KILLED"
    assert "ended without closing" in client.get_run(parent).data.tags["failure_reason"]
    assert client.get_run(alive).info.status == "RUNNING"


def test_a_shared_sweep_parent_is_closed_by_the_last_sweep_to_end(tmp_path):
    """Identical sweeps started in the same second share a sweep folder and parent: the first to end leaves
    the parent open while a live process still runs one of its jobs; the last one closes it."""
    from tlbench import sweep_run
    from tlbench.processes import PROCESS_TAG, this_process
    from tlbench.tracking import client_for, experiment_id

    uri = f"sqlite:///{tmp_path}/m.db"
    client = client_for(uri)
    experiment = experiment_id(client, "sweeps")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent, PROCESS_TAG: this_process()}).info.run_id
    sweep_run.close_sweep_run(uri, parent, "summary", None, expected=1)
    assert client.get_run(parent).info.status == "RUNNING"  # this process still runs the child
    client.set_terminated(child, "FINISHED")
    assert sweep_run.close_sweep_run(uri, parent, "summary", None, expected=1) == 0
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_stop_whose_keyboardinterrupt_python_dropped_still_ends_the_run_killed(tmp_path, mlflow_uri):
    """A Ctrl-C or SIGTERM handled while Python runs a garbage-collector callback raises a KeyboardInterrupt
    that Python prints and drops; the request it noted stops training at the next batch, and the run is
    KILLED, not FINISHED."""
    import pytorch_lightning as pl

    from tlbench import interrupts
    from tlbench.train import train

    class DroppedStop(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                interrupts._requested[:] = [15]  # what request_stop notes before its exception is lost

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=3"]), extra_callbacks=[DroppedStop()])
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(mlflow_uri).search_runs([MlflowClient(mlflow_uri).get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "KILLED" and not interrupts._requested  # closed, and the request cleared
    import tlbench.tracking

    tlbench.tracking.interrupted = False  # this process goes on with other tests


@pytest.mark.slow  # trains
def test_predictions_that_overflow_end_the_run_failed_in_one_line(tmp_path, mlflow_uri):
    """lr=1e6 with SGD: two finite losses, then weights so large the network overflows. The run is FAILED
    with a line saying so, not a linear-algebra traceback from a validator on NaN predictions."""
    from mlflow.tracking import MlflowClient

    from tlbench.errors import TrainingError
    from tlbench.train import train

    with pytest.raises(TrainingError, match="non-finite|diverged"):
        train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "optim.lr=1e6", "optim.name=sgd"]))
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["failure_reason"]
