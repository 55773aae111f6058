"""Scale-out on engines users already run, started for real here: a PostgreSQL cluster, an MLflow
tracking server on it with proxied artifacts, sweep jobs in joblib worker processes and two `tlbench
search` processes sharing one Optuna study in PostgreSQL. docs/scale-out.md gives the same commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from helpers import TINY
from mlflow.tracking import MlflowClient
from servers import PG_PORT, doc_commands, start_mlflow_server, start_postgres, substituted, why_no_postgres, with_option

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_no_postgres() is not None, reason=why_no_postgres() or "")]

FAST = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.synthetic_size=200"]
#: What the tests add to the doc's search command, as the doc says: sampling that cannot repeat a point by chance.
TEST_ONLY_SEARCH_OPTIONS = ["tracking.experiment=search_pg", "--sampler", "random", "--pruner", "none"]


@pytest.fixture(scope="module")
def postgres():
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    postgres.create_database("mlflow")  # the doc's database name
    started = start_mlflow_server(postgres, folder / "artifacts", folder / "server.log")
    yield started
    started.stop()


def _tlbench(args: list[str], cwd, server_uri: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_uri, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tlbench", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_joblib_sweep_records_on_the_tracking_server_with_artifacts_on_the_server_side(server, tmp_path):
    sweep = _tlbench(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *FAST,
            "tracking.experiment=scale_out",
            f"checkpoint_dir={tmp_path}/ckpt",
            f"hydra.sweep.dir={tmp_path}/sweep",
            "adapt=source_only,dann",
        ],
        tmp_path,
        server.uri,
    )
    output = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, output[-3000:]
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("scale_out").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tlbench.parent") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert sorted(r.data.params["adapt.name"] for r in children) == ["dann", "source_only"]
    assert all(r.info.status == "FINISHED" and "test/target_acc" in r.data.metrics for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    # proxied artifacts: uploaded through the server into its own folder, nothing in the client's
    for run in children:
        stored = {p.relative_to(server.artifacts).as_posix() for p in server.artifacts.rglob("*") if run.info.run_id in p.as_posix()}
        assert any(p.endswith("config.yaml") for p in stored) and any(p.endswith("model/MLmodel") for p in stored), stored
    assert not (tmp_path / "mlruns").exists()
    # the printed way to look at the runs works: against a server it is the server's own URL
    hint = next(line for line in output.splitlines() if line.startswith("Open them in the MLflow UI:"))
    assert "--backend-store-uri" not in hint and server.uri in hint
    assert "View run" not in output and "View experiment" not in output  # MLflow's own links per run stay quiet
    import urllib.request

    with urllib.request.urlopen(hint.split()[hint.split().index("open") + 1], timeout=30) as page:
        assert page.status == 200
    report = _tlbench(["report", "--experiment", "scale_out", "--sweep", "latest"], tmp_path, server.uri)
    assert report.wait(timeout=120) == 0, report.stdout.read()


def test_two_search_processes_share_a_postgres_study_and_record_on_the_server(postgres, server, tmp_path):
    storage = postgres.create_database("optuna")
    # the doc's command (docs/scale-out.md section 3) with the substitutions it states
    doc = substituted(doc_commands("3")["tlbench"], {PG_PORT: str(postgres.port)})
    assert doc[doc.index("--storage") + 1] == storage
    study_name = doc[doc.index("--study-name") + 1]
    recipe = [o for o in FAST if o.split("=")[0] not in {w.split("=")[0] for w in doc if "=" in w}]  # the doc's own overrides stay
    command = [*with_option(with_option(doc[1:], "--n-trials", "4"), "--workers", "1"), *recipe, *TEST_ONLY_SEARCH_OPTIONS, "--out-dir", str(tmp_path / "out")]
    first = _tlbench(command, tmp_path, server.uri)
    time.sleep(1.0)  # the second joins a study the first is still setting up
    second = _tlbench(command, tmp_path, server.uri)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[-2000:] for o in outputs]

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == len(trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4, "the processes repeated each other's points"
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("search_pg").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("search.role") == "parent"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 4 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
