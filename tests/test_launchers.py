"""Sweeps on real Hydra launchers (joblib worker processes, submitit local jobs): every run recorded under
the sweep's MLflow parent run, a job that fails before recording anything is counted, and the command
exits 1 when any job failed (joblib used to exit 0 and print "1/2 done" once per worker)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers import TINY
from mlflow.tracking import MlflowClient

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow

LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    "ray": ["hydra/launcher=ray"],  # local ray.init(); only with the optional extra installed
}
RAY_MISSING = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None


@pytest.mark.parametrize(
    "launcher",
    [
        "joblib",
        "submitit_local",
        pytest.param("ray", marks=pytest.mark.skipif(RAY_MISSING, reason="optional: pip install -e '.[ray]' (pins cloudpickle 2.2.1)")),
    ],
)
def test_launcher_records_every_run_under_the_sweep_parent_and_fails_the_command(launcher, tmp_path, mlflow_uri):
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "-m",
        *LAUNCHERS[launcher],
        *TINY,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "data.synthetic_size=200",
        f"tracking.uri={mlflow_uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "adapt=source_only,dann",
        "seed=0,x",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]  # seed=x fails in validation

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tlbench")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs table
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tlbench.parent") == "sweep"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1
    parent = parents[0]
    assert sorted(r.data.params["adapt.name"] for r in children) == ["dann", "source_only"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert parent.info.status == "FAILED" and parent.data.params["sweep.jobs"] == "4"
    assert parent.data.metrics["runs_finished"] == 2 and parent.data.metrics["runs_missing"] == 2
    assert {"sweep_summary.md", "sweep_accuracy.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "2 job(s) recorded no run" in result.stdout
