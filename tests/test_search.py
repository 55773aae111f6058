"""Hyperparameter search on tiny data: pruning, failures, MLflow nesting, a killed worker, parallel workers,
and the Hydra sweeper plugin. Real Optuna and MLflow SQLite stores, real worker processes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tlbench.errors import ConfigError
from tlbench.search.space import load_space, merge_command_line, space_from_dict, trial_overrides
from tlbench.search.study import prepare, run_search

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "backbone=small_cnn",
    "data=digits",
    "data.synthetic_size=300",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module (creating one runs seconds of migrations); tests use their own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('search_mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(shared_store, request) -> tuple[str, str, list[str]]:
    """(uri, experiment, overrides) for this test."""
    experiment = request.node.name[:60]
    return shared_store, experiment, [f"tracking.uri={shared_store}", f"tracking.experiment={experiment}"]


def write_space(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def study_trials(storage: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def children_and_parent(uri: str, experiment: str):
    runs = runs_of(uri, experiment)
    parents = [r for r in runs if r.data.tags.get("search.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_space_yaml_and_command_line_sweeps_become_params_and_overrides():
    space = load_space("dann")
    assert set(space.params) == {"optim.lr", "adapt.trade_off", "freeze"} and space.params["optim.lr"].log
    merged, fixed = merge_command_line(
        space, ["backbone=small_cnn", "optim.lr=0.01", "seed=range(0,3)", "adapt.gamma=tag(int,interval(5,15))", "adapt.max_lambda=interval(0.5,1)"]
    )
    assert "optim.lr" not in merged.params  # fixed on the command line
    assert merged.params["seed"].type == "int" and (merged.params["seed"].low, merged.params["seed"].high) == (0, 2)
    assert merged.params["adapt.gamma"].type == "int" and merged.params["adapt.max_lambda"].type == "float"
    assert fixed == ["adapt=dann", "backbone=small_cnn", "optim.lr=0.01"]
    assert trial_overrides(fixed, {"freeze": "full", "adapt.trade_off": 0.5, "optim.lr": 1e-05}) == [
        "adapt=dann",
        "backbone=small_cnn",
        "freeze=full",
        "adapt.trade_off=0.5",
        "optim.lr=1e-05",
    ]
    with pytest.raises(ConfigError, match="log scale needs low > 0"):
        space_from_dict("bad", {"params": {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}})
    with pytest.raises(ConfigError, match="freeze=nonexistent"):
        prepare(space_from_dict("bad", {"params": {"freeze": {"type": "categorical", "choices": ["full", "nonexistent"]}}}), TINY)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_study_prunes_fails_and_nests_every_trial_under_one_parent(tmp_path, tracking):
    """Grid over max_epochs × lr: 1 epoch → COMPLETE, 3 epochs → PRUNED after epoch 1 (threshold pruner
    that no accuracy passes), lr=1e30 → NaN loss → FAIL; the study goes on through all four."""
    space = load_space(
        write_space(
            tmp_path / "grid.yaml",
            """
params:
  trainer.max_epochs: {type: categorical, choices: [1, 3]}
  optim.lr: {type: categorical, choices: [0.01, 1.0e+30]}
study:
  sampler: grid
  pruner: {type: threshold, lower: 2.0, n_warmup_steps: 1}
""",
        )
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    fixed = [o for o in TINY if not o.startswith("trainer.max_epochs")]  # a plain override would fix the searched key
    mlflow_uri, experiment, tracking_overrides = tracking
    job = prepare(space, fixed + ["optim.name=sgd", "optim.scheduler=constant", *tracking_overrides], storage=storage, out_dir=str(tmp_path / "out"))
    assert job.n_trials == 4 and job.monitor == "val/source_acc" and job.direction == "maximize"
    result = run_search(job)
    assert (result["complete"], result["pruned"], result["failed"], result["lost"]) == (1, 1, 2, 0)

    states = {(t.params["trainer.max_epochs"], t.params["optim.lr"]): t for t in study_trials(storage, job.study_name)}
    assert states[(1, 0.01)].state == TrialState.COMPLETE
    assert states[(3, 0.01)].state == TrialState.PRUNED and sorted(states[(3, 0.01)].intermediate_values) == [0, 1]
    assert all(states[(e, 1e30)].state == TrialState.FAIL and "non-finite loss" in states[(e, 1e30)].user_attrs["fail_reason"] for e in (1, 3))

    parents, children = children_and_parent(mlflow_uri, experiment)
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    for number, trial in ((t.number, t) for t in states.values()):
        run = by_trial[number]
        if trial.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["pruned"] == "true" and "failure_reason" not in run.data.tags
        elif trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and "pruned" not in run.data.tags
            assert run.info.run_id == result["best_run_id"] == trial.user_attrs["mlflow_run_id"]
        else:
            assert run.info.status == "FAILED"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == pytest.approx(result["best_value"])
    assert parent.data.tags["best_params.trainer.max_epochs"] == "1"
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(parent.info.run_id, "search")}
    # one completed trial: history plotted, importance explained instead of drawn
    assert {"search/history.png", "search/param_importance.txt", "search/trials.csv", "search/summary.json"} <= artifacts
    assert not list((tmp_path / "out").glob("trial_*/checkpoints/*"))  # checkpoints removed after each trial


def search_command(tmp_path: Path, space: str, tracking_overrides: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tlbench.search.cli",
        "--space",
        space,
        *TINY,
        *tracking_overrides,
        "--storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        "--out-dir",
        str(tmp_path / "out"),
        *extra,
    ]


@pytest.mark.slow  # starts a process
def test_killed_worker_trial_is_requeued_and_the_study_resumes_to_n_trials(tmp_path, tracking):
    """SIGKILL the worker in the middle of trial 0; the same command again finds trial 0 without a heartbeat
    (grace 3 s), marks it FAIL (lost), queues its parameters again as trial 2 and runs trials 1 and 2."""
    space = write_space(
        tmp_path / "space.yaml",
        """
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
study:
  n_trials: 2
  sampler: random
  pruner: none
  heartbeat_interval: 1
  grace_period: 3
""",
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    uri, experiment, tracking_overrides = tracking
    command = search_command(tmp_path, space, tracking_overrides, "trainer.max_epochs=40")
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait until trial 0 has reported an epoch
            try:
                trials = study_trials(storage, "space")
            except (KeyError, Exception):
                trials = []
            if any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
                break
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("trial 0 never started")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed = [t for t in study_trials(storage, "space") if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and killed[0].number == 0

    # Restart (in this process, to save an interpreter start): the same study with the same settings
    # (a resume with other fixed overrides is refused, see the rerun test).
    resumed = prepare(load_space(space), TINY + tracking_overrides + ["trainer.max_epochs=40"], storage=storage, out_dir=str(tmp_path / "out"))
    result = run_search(resumed)
    assert (result["complete"], result["lost"]) == (2, 1)

    trials = study_trials(storage, "space")
    counted = [t for t in trials if t.state != TrialState.FAIL]
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)  # n_trials, none lost
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in lost] == [0] and "fail_reason" not in lost[0].user_attrs
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == lost[0].params  # same point, run again
    assert sorted(t.number for t in trials) == [0, 1, 2]

    parents, children = children_and_parent(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the resumed sweep reuses its parent
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    status = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert sorted(status) == [0, 1, 2]  # one run per trial, no duplicates
    assert status[0].info.status == "KILLED" and status[0].data.tags["lost"] == "true"
    assert all(status[n].info.status == "FINISHED" for n in (1, 2))


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_two_worker_processes_share_one_sqlite_study(tmp_path, tracking):
    space = load_space(
        write_space(
            tmp_path / "space.yaml",
            """
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
  freeze: {type: categorical, choices: [linear_probe, full]}
study: {n_trials: 4, sampler: tpe, pruner: median}
""",
        )
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    mlflow_uri, experiment, tracking_overrides = tracking
    job = prepare(space, TINY + tracking_overrides, storage=storage, out_dir=str(tmp_path / "out"))
    result = run_search(job, workers=2)
    assert result["complete"] + result["pruned"] == 4 and result["queued"] == result["running"] == 0

    trials = study_trials(storage, job.study_name)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.user_attrs["worker"].rsplit(":", 1)[1] != str(os.getpid()) for t in trials)  # trained in the worker processes
    parents, children = children_and_parent(mlflow_uri, experiment)
    assert len(parents) == 1 and len(children) == 4
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}


@pytest.mark.slow  # starts a process
def test_hydra_sweeper_plugin_runs_the_same_study(tmp_path, tracking):
    mlflow_uri, experiment, tracking_overrides = tracking
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "-m",
        "hydra/sweeper=tlbench_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.pruner=none",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        *TINY,
        "trainer.max_epochs=1",
        *tracking_overrides,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "optim.lr=tag(log,interval(1e-3,1e-1))",
        "freeze=full,linear_probe",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = study_trials(f"sqlite:///{tmp_path / 'optuna.db'}", "sweep")
    assert len(trials) == 2 and all(set(t.params) == {"optim.lr", "freeze"} for t in trials)
    parents, children = children_and_parent(mlflow_uri, experiment)
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["sweep_dir"] == str((tmp_path / "sweep").resolve()) for c in children)
    assert "2 run(s) of this sweep" in result.stdout  # tlbench's end-of-sweep table lists the trials


@pytest.mark.slow  # starts a process
def test_best_trial_rerun_command_reproduces_it_and_a_changed_resume_is_refused(tmp_path, tracking, capsys):
    """The printed rerun command is the best trial's own overrides: running it gives the trial's metric.
    Resuming the study with other fixed overrides is one line naming the difference, not a silent mix."""
    from tlbench.search.cli import main as search_main

    mlflow_uri, experiment, tracking_overrides = tracking
    space = write_space(
        tmp_path / "lr.yaml", "params:\n  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\nstudy: {sampler: random, pruner: none}\n"
    )
    common = ["--space", space, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out-dir", str(tmp_path / "out")]
    assert search_main([*common, "--n-trials", "2", *TINY, *tracking_overrides]) == 0
    printed = capsys.readouterr().out
    best_value = float(re.search(r"best: trial \d+ val/source_acc=([0-9.]+)", printed).group(1))
    rerun = re.search(r"\(rerun: tlbench (.*)\)", printed).group(1)
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", *shlex.split(rerun), f"checkpoint_dir={tmp_path}/ckpt", "tracking.experiment=rerun"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (rerun_run,) = runs_of(mlflow_uri, "rerun")
    history = MlflowClient(mlflow_uri).get_metric_history(rerun_run.info.run_id, "val/source_acc")
    assert max(m.value for m in history) == pytest.approx(best_value, abs=5e-5)

    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.metric_names == ["val/source_acc"]
    (parent,) = children_and_parent(mlflow_uri, experiment)[0]
    assert parent.data.params["search.sampler"] == "random"  # not the JSON string "\"random\""
    with pytest.raises(ConfigError, match=r"study 'lr' .* other settings \(.*\+data\.batch_size=16"):
        run_search(
            prepare(
                load_space(space),
                [*TINY, "data.batch_size=16", *tracking_overrides],
                storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                out_dir=str(tmp_path / "out"),
            )
        )


@pytest.mark.parametrize(
    "rule, metric, direction", [("im", "val/target_im", "maximize"), ("dev", "val/dev", "minimize"), ("classami", "val/target_classami", "maximize")]
)
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_a_label_free_validator_is_a_search_objective_in_its_own_direction(rule, metric, direction, tmp_path):
    space = space_from_dict("lr", {"params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}})
    job = prepare(space, TINY + [f"selection={rule}"], storage=f"sqlite:///{tmp_path}/o.db", out_dir=str(tmp_path / "out"))
    assert (job.monitor, job.direction) == (metric, direction)


def test_search_rule_flag_is_the_selection_override(monkeypatch):
    from tlbench.search import cli

    seen = {}
    monkeypatch.setattr(
        "tlbench.search.study.prepare", lambda space, overrides, **kw: seen.setdefault("overrides", overrides) and (_ for _ in ()).throw(ConfigError("stop"))
    )
    assert cli.main(["--rule", "bnm", "backbone=small_cnn"]) != 0
    assert seen["overrides"][-1] == "selection=bnm"


@pytest.mark.slow  # starts the real dashboard server
def test_optuna_dashboard_serves_a_study_from_its_storage(tmp_path):
    """The README's way to watch a search: `optuna-dashboard <storage>` (installed with tlbench) on
    127.0.0.1, answering with the study and its trials."""
    import json
    import subprocess
    import time
    import urllib.request

    import optuna
    from servers import free_port

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="watched", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    process = subprocess.Popen([str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.loads(response.read())["study_summaries"]
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        (watched,) = [s for s in studies if s["study_name"] == "watched"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{watched['study_id']}", timeout=5) as response:
            assert len(json.loads(response.read())["trials"]) == 3
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_storage_whose_tables_another_process_is_creating_is_opened_again(monkeypatch):
    """Two searches starting together on a new PostgreSQL database: the slower one's table creation meets
    the other's (`type "studydirection" already exists`); it retries instead of failing. Other errors do not."""
    from tlbench.search import study

    calls = []

    def racing(job):
        calls.append(job)
        if len(calls) == 1:
            raise RuntimeError('(psycopg.errors.DuplicateObject) type "studydirection" already exists')
        return "storage"

    monkeypatch.setattr(study, "make_storage", racing)
    monkeypatch.setattr(study.time, "sleep", lambda seconds: None)
    assert study.open_storage("job") == "storage" and len(calls) == 2

    def broken(job):
        raise RuntimeError("password authentication failed")

    monkeypatch.setattr(study, "make_storage", broken)
    with pytest.raises(RuntimeError, match="password"):
        study.open_storage("job")
