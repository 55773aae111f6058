"""Run names tell runs apart in the MLflow UI even when cut to ~24 characters, and runs carry MLflow's
standard tags (user, source, git commit) and the Hydra overrides they were started with."""

from __future__ import annotations

import shlex
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
from helpers import TINY, compose
from mlflow.tracking import MlflowClient

from tlbench.config import validate
from tlbench.plan import default_run_name

REPO = Path(__file__).resolve().parent.parent


def name(*overrides: str) -> str:
    return default_run_name(validate(compose(["backbone=small_cnn", *overrides])))


def test_names_of_a_grid_differ_in_their_first_24_characters():
    grid = [name(f"adapt={a}", f"seed={s}", f"freeze={f}") for a, s, f in product(("source_only", "dann"), (0, 1), ("full", "linear_probe"))]
    assert len({n[:24] for n in grid}) == len(grid), grid
    assert name("adapt=dann") == "dann s0 · small_cnn · digits"


def test_names_keep_what_differs_from_the_defaults():
    assert name("adapt=coral", "batch_composition=domain_bn") == "coral s0 · domain_bn · small_cnn · digits"
    assert name("data.labels_per_class=10", "freeze=linear_probe") == "source_only s0 · 10/class · linear_probe · small_cnn · digits"
    assert name("data.label_fraction=0.05") == "source_only s0 · 5% labels · small_cnn · digits"
    assert name("tracking.run_name=mine") == "mine"


def test_names_in_a_sweep_show_the_other_keys_it_varies_after_method_and_seed():
    run = validate(compose(["backbone=small_cnn", "adapt=dann", "optim.lr=0.01", "freeze=linear_probe"]))
    swept = [("adapt", "dann"), ("optim.lr", "0.01"), ("freeze", "linear_probe"), ("data.target", "usps")]
    assert default_run_name(run, swept) == "dann s0 · lr=0.01 · target=usps · linear_probe · small_cnn · digits"
    assert default_run_name(run, [("seed", "0")]) == default_run_name(run)  # already in the name


def test_a_job_reads_the_values_of_its_sweeps_keys_from_its_overrides(tmp_path):
    from tlbench.sweep_run import plan_sweep, swept_values

    plan_sweep("sqlite:///unused.db", "e", str(tmp_path), ["adapt=dann,coral", "optim.lr=0.1,0.01"], 4, ["adapt", "optim.lr"])
    assert swept_values(str(tmp_path), ["adapt=coral", "+optim.lr=0.01", "seed=3"]) == [("adapt", "coral"), ("optim.lr", "0.01")]
    assert swept_values(str(tmp_path / "no_sweep_here"), ["adapt=coral"]) == []


@pytest.mark.slow  # starts a process
def test_cli_run_has_standard_tags_and_its_overrides(tmp_path, mlflow_uri):
    overrides = [*TINY, "trainer.max_epochs=1", "adapt=dann", f"tracking.uri={mlflow_uri}", f"checkpoint_dir={tmp_path}/ckpt", f"hydra.run.dir={tmp_path}/out"]
    result = subprocess.run([sys.executable, "-m", "tlbench", *overrides], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "INFO mlflow" not in result.stdout + result.stderr  # no store-creation chatter from MLflow
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    tags = run.data.tags
    assert f"MLflow run {run.info.run_id} in experiment 'tlbench'" in result.stdout  # what the user needs next
    assert run.info.run_name == tags["mlflow.runName"] == "dann s0 · small_cnn · digits"
    assert tags["mlflow.source.name"] == "tlbench" and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    # the tag is a command line: `tlbench <overrides>` (hydra.run.dir is Hydra's, not the job's)
    assert shlex.split(tags["overrides"]) == overrides[:-1]
    # the job's .hydra folder travels with the run: the exact composed config and overrides
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"} <= hydra_files
