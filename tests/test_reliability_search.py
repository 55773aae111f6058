"""Separate `tlbench search` processes on one study (two shells, or two machines sharing the storage)
draw different points and record their trials under one MLflow parent run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow

#: A trial of about a second: one batch of a tiny source set, one validation batch.
TRIAL = [
    "backbone=small_cnn",
    "backbone.width=4",
    "data=digits",
    "data.synthetic_size=100",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
]


def test_two_search_processes_share_the_study_without_repeating_points(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "search",
        *TRIAL,
        f"tracking.uri={uri}",
        "--n-trials",
        "6",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--storage",
        storage,
        "--study-name",
        "shared",
        "--out-dir",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # the second joins a study the first is still setting up
    second = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=240)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, "both processes ran trials"
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == 6, f"processes repeated each other's points: {[t.params for t in trials]}"

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    parents = [r for r in runs if r.data.tags.get("search.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("search.role") != "parent"]
    assert len(parents) == 1, f"{len(parents)} parent runs for one study"
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 6 and {r.data.tags.get("mlflow.parentRunId") for r in children} == {parents[0].info.run_id}
