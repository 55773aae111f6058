"""A real run recorded in a real SQLite MLflow store: params, per-epoch metrics, config artifact, tags,
status; failures marked FAILED with the reason; Hydra multirun records every run of the grid."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from helpers import TINY, compose, tiny_run
from mlflow.tracking import MlflowClient

from tlbench.errors import TrainingError
from tlbench.train import train


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_run_records_params_metrics_artifact_and_tags(tmp_path, mlflow_uri):
    metrics = train(tiny_run(tmp_path, mlflow_uri, ["adapt=dann"]))
    client = MlflowClient(mlflow_uri)
    run = client.get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["adapt.name"] == "dann" and params["backbone.name"] == "small_cnn"
    assert params["data.synthetic_size"] == "400" and params["selection"] == "source_val"
    tags = run.data.tags
    for tag in ("git_commit", "tlbench_version", "dataset", "source_fingerprint", "target_fingerprint", "config_hash"):
        assert tags.get(tag), tag
    history = client.get_metric_history(run.info.run_id, "val/source_acc")
    assert len(history) == 2  # one value per epoch
    for name in ("val/target_acc", "val/target_entropy", "eval/target_test_acc", "train/loss", "test/target_acc", "test/source_acc"):
        assert name in run.data.metrics, name
    assert 0.0 <= run.data.metrics["test/target_acc"] <= 1.0
    assert run.data.metrics["selected_epoch"] in (1.0, 2.0)  # the epoch's number, as the progress lines count
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "epoch"), key=lambda m: m.step)][-1] == 2.0
    artifacts = [f.path for f in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    text = open(path).read()
    assert "name: dann" in text and "synthetic_size: 400" in text


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_nan_loss_marks_run_failed_with_reason(tmp_path, mlflow_uri):
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(tiny_run(tmp_path, mlflow_uri, ["optim.lr=1e30", "optim.name=sgd", "optim.scheduler=constant"]))
    runs = MlflowClient(mlflow_uri).search_runs([MlflowClient(mlflow_uri).get_experiment_by_name("tlbench").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "non-finite loss" in runs[0].data.tags["failure_reason"]


@pytest.mark.slow  # starts a process
def test_multirun_records_every_grid_point_and_goes_on_after_a_failure(tmp_path, mlflow_uri):
    """adapt × seed grid (4 runs) plus one bad-lr point that fails: the sweep continues and exits 1."""
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        f"tracking.uri={mlflow_uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
        "adapt=source_only,dann",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_experiment_by_name("tlbench").experiment_id

    def runs_and_parents():
        found = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
        return [r for r in found if "tlbench.parent" not in r.data.tags], [r for r in found if "tlbench.parent" in r.data.tags]

    runs, parents = runs_and_parents()
    assert sorted((r.data.params["adapt.name"], r.data.params["seed"]) for r in runs) == [
        ("dann", "0"),
        ("dann", "1"),
        ("source_only", "0"),
        ("source_only", "1"),
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "test target acc" in result.stdout  # the end-of-sweep table
    # one MLflow parent run for the sweep, every job its child, the summary recorded on it
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.tags["tlbench.parent"] == "sweep"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.data.params["sweep.jobs"] == "4" and "adapt=source_only,dann" in parent.data.params["sweep.overrides"]
    summary = client.download_artifacts(parent.info.run_id, "sweep_summary.md", str(tmp_path))
    assert all(r.info.run_name in open(summary).read() for r in runs)
    assert "4/4 run(s) done" in result.stdout

    failing = subprocess.run(
        command[:-3] + ["optim.lr=1e30,0.001", "optim.name=sgd", "optim.scheduler=constant", f"hydra.sweep.dir={tmp_path}/sweep2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert failing.returncode == 1
    assert "non-finite loss" in failing.stderr
    runs, parents = runs_and_parents()
    statuses = sorted(r.info.status for r in runs)
    assert statuses.count("FAILED") == 1 and statuses.count("FINISHED") == 5
    assert parents[-1].info.status == "FAILED" and parents[-1].data.metrics["runs_failed"] == 1

    # the report selects a sweep by its parent run, not by a hand-written filter
    from tlbench.report.cli import main as report_main

    assert report_main(["--uri", mlflow_uri, "--sweep", parents[0].info.run_id]) == 0
    assert report_main(["--uri", mlflow_uri, "--sweep", "latest", "--rows", "optim.lr"]) == 0
    assert report_main(["--uri", mlflow_uri, "--sweep", "no-such-sweep"]) == 2


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_two_step_transfer_starts_from_a_recorded_backbone(tmp_path, mlflow_uri):
    """Source pretraining saves the backbone to MLflow; a later run starts from runs:/<id>/backbone/backbone.pt."""
    import torch

    from tlbench.backbones import BACKBONES
    from tlbench.config import validate

    first = train(tiny_run(tmp_path, mlflow_uri, ["tracking.log_model=true"]))
    assert "backbone" in [f.path for f in MlflowClient(mlflow_uri).list_artifacts(first["run_id"])]
    source = f"runs:/{first['run_id']}/backbone/backbone.pt"
    second = tiny_run(tmp_path / "2", mlflow_uri, [f"backbone.weights={source}", "freeze=linear_probe"])
    from tlbench.plan import plan_run

    planned = plan_run(second)  # the plan fetches runs:/ weights from the run's store to a local file
    assert not planned.backbone.weights.startswith("runs:/")
    loaded = BACKBONES.build(planned.backbone)
    fresh = BACKBONES.build(validate(compose(["backbone=small_cnn"])).backbone)
    saved = torch.load(MlflowClient(mlflow_uri).download_artifacts(first["run_id"], "backbone/backbone.pt", str(tmp_path)), weights_only=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    assert not all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items() if v.is_floating_point())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("sqlite:///elsewhere.db")  # the caller's own setting: a run neither needs nor changes it
    try:
        trained = train(second)  # trains on the loaded weights and records where they came from
        assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"
    finally:
        mlflow.set_tracking_uri(previous)
    assert MlflowClient(mlflow_uri).get_run(trained["run_id"]).data.params["backbone.weights"] == source


@pytest.mark.slow  # trains
def test_metric_logger_writes_one_batch_per_epoch_and_keeps_each_point(tmp_path, mlflow_uri, monkeypatch):
    from tlbench.config import TrackingConfig
    from tlbench.mlflow_logger import MlflowMetricLogger
    from tlbench.tracking import Store, recorded_run

    with recorded_run(Store.of(TrackingConfig(uri=mlflow_uri, experiment="buffer")), "buffered", {}) as recorder:
        writes = []
        original = recorder.client.log_batch
        monkeypatch.setattr(recorder.client, "log_batch", lambda *a, **k: writes.append(len(k.get("metrics", []))) or original(*a, **k))
        logger = MlflowMetricLogger(recorder)
        for step in range(3):
            logger.log_metrics({"train/loss": 1.0 - step / 10, "epoch": 0}, step)
        assert writes == []  # nothing written mid-epoch
        logger.log_metrics({"train/loss": 0.5, "epoch": 1}, 3)
        assert writes == [6]  # epoch 0's three points (loss + epoch each) in one request
        logger.finalize("success")
        assert writes == [6, 2]
    history = MlflowClient(mlflow_uri).get_metric_history(recorder.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.5)]


@pytest.mark.slow
def test_a_run_late_in_a_sweep_matches_the_same_run_in_a_fresh_process(tmp_path):
    """What one sweep process reuses between its runs (built domains, objects frozen out of the collector,
    buffered metric writes) changes nothing: the second job of a sweep records exactly the metrics the
    same configuration records alone in a new process. Cached and uncached paths both."""

    def recorded(uri: str, *overrides: str) -> dict:
        client = MlflowClient(uri)
        (run,) = [
            r
            for r in client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
            if "tlbench.parent" not in r.data.tags and all(r.data.params[k] == v for k, v in (o.split("=") for o in overrides))
        ]
        history = {m: [(p.step, p.value) for p in client.get_metric_history(run.info.run_id, m)] for m in ("train/loss", "val/target_acc")}
        return {"metrics": {k: v for k, v in run.data.metrics.items() if "seconds" not in k}, "history": history}

    base = [sys.executable, "-m", "tlbench", *TINY, "trainer.max_epochs=2", "adapt=dann", f"checkpoint_dir={tmp_path}/ckpt"]
    freezes = ("full", "linear_probe")  # the uncached and the cached path
    commands = {
        "sweep": base[:3]
        + ["-m"]
        + base[3:]
        + [f"freeze={','.join(freezes)}", "optim.lr=0.01,0.003", f"tracking.uri=sqlite:///{tmp_path}/sweep.db", f"hydra.sweep.dir={tmp_path}/sweep"]
    }
    for freeze in freezes:  # each alone in a new process, with the sweep's last learning rate
        commands[freeze] = base + [f"freeze={freeze}", "optim.lr=0.003", f"tracking.uri=sqlite:///{tmp_path}/{freeze}.db", f"hydra.run.dir={tmp_path}/{freeze}"]
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path) for name, command in commands.items()
    }  # at once: the three processes are independent
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
    for freeze in freezes:  # in the sweep, lr=0.003 is each freeze's second job
        late = recorded(f"sqlite:///{tmp_path}/sweep.db", f"freeze.name={freeze}", "optim.lr=0.003")
        alone = recorded(f"sqlite:///{tmp_path}/{freeze}.db", "optim.lr=0.003")
        assert late["metrics"] and late == alone, freeze


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_garbage_made_between_runs_is_not_frozen_forever(tmp_path, mlflow_uri):
    """train() freezes what is alive so its own collection is cheap; a reference cycle dropped before the
    run must still be collectable afterwards."""
    import gc
    import weakref

    class Node:
        pass

    gc.disable()  # no automatic collection may free the cycle before train() starts
    node = Node()
    node.self = node  # a cycle: only the cyclic collector frees it
    alive = weakref.ref(node)
    del node
    try:
        train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1"]))
        gc.collect()
        assert alive() is None
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.slow
def test_a_skip_done_sweep_counts_reused_runs_as_done_and_tables_include_them(tmp_path, mlflow_uri):
    """The restart path: a sweep rerun with tracking.skip_done=true reuses the finished runs — exit 0, parent
    FINISHED, nothing counted as failed — and its gain table and `report --sweep` include the reused baseline."""
    base = [sys.executable, "-m", "tlbench", "-m", *TINY, "trainer.max_epochs=1", f"tracking.uri={mlflow_uri}", f"checkpoint_dir={tmp_path}/ckpt", "seed=0,1"]
    first = subprocess.run(base + ["adapt=source_only", f"hydra.sweep.dir={tmp_path}/sweep1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(
        base + ["adapt=source_only,dann", "tracking.skip_done=true", f"hydra.sweep.dir={tmp_path}/sweep2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4/4 run(s) done" in again.stdout and "failed" not in again.stdout
    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_experiment_by_name("tlbench").experiment_id
    parent = client.search_runs([experiment_id], "tags.`tlbench.parent` = 'sweep'", order_by=["attributes.start_time DESC"])[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["runs_reused"] == 2 and parent.data.metrics["runs_failed"] == 0
    assert "dann" in again.stdout.split("paired on seed")[-1] and "source_only" in again.stdout.split("paired on seed")[-1]
    assert len(client.search_runs([experiment_id], "tags.`tlbench.parent` != ''")) == 2  # no run trained twice
    assert len(client.search_runs([experiment_id])) == 2 + 4

    from tlbench.report.cli import main as report_main
    from tlbench.report.collection import collect, sweep_filter

    frame = collect(mlflow_uri, "tlbench", sweep_filter(mlflow_uri, "tlbench", parent.info.run_id), rules=("source_val",))
    assert sorted(frame["adapt.name"]) == ["dann", "dann", "source_only", "source_only"]
    assert report_main(["--uri", mlflow_uri, "--sweep", parent.info.run_id]) == 0


@pytest.mark.slow
def test_the_printed_report_command_works_for_the_sweep_that_printed_it(tmp_path, mlflow_uri):
    """A freeze × seed grid: `report` by adapt alone refuses to average mixed freezes, so the printed command
    must group by what the sweep varies."""
    import shlex

    command = [
        sys.executable,
        "-m",
        "tlbench",
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        f"tracking.uri={mlflow_uri}",
        f"checkpoint_dir={tmp_path}/ckpt",
        "freeze=full,linear_probe",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("Tables of this sweep:"))
    printed = shlex.split(line.split(":", 1)[1])
    assert printed[:2] == ["tlbench", "report"] and "freeze.name" in printed[printed.index("--rows") + 1]
    rerun = subprocess.run([sys.executable, "-m", "tlbench", *printed[1:]], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "full" in rerun.stdout and "linear_probe" in rerun.stdout


def recorded_config(result, uri):
    from omegaconf import OmegaConf

    from tlbench.config import validate

    return validate(OmegaConf.create(open(MlflowClient(uri).download_artifacts(result["run_id"], "config.yaml")).read()))


@pytest.mark.slow  # trains
def test_a_cached_linear_probe_logs_the_backbone_its_hint_names(tmp_path, mlflow_uri):
    """With tracking.log_model a run names `backbone.weights=runs:/…` for a next transfer; a linear probe
    trains on cached features, and the backbone that made them is what that artifact must hold; its MLflow
    model is the whole network and scores the recorded test accuracy."""
    import torch

    from tlbench.backbones import BACKBONES
    from tlbench.plan import plan_run

    first = train(tiny_run(tmp_path, mlflow_uri, ["tracking.log_model=true", "freeze=linear_probe"]))
    assert first["backbone_weights"] == f"runs:/{first['run_id']}/backbone/backbone.pt"
    recorded = MlflowClient(mlflow_uri).get_run(first["run_id"])
    assert recorded.data.tags["feature_cache"] == "on"  # the run really trained on cached features
    import mlflow
    import numpy as np

    from tlbench.data.datamodule import DomainDataModule

    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{first['run_id']}/model")  # the whole model: backbone + head
    test = DomainDataModule(recorded_config(first, mlflow_uri).data, 0).target.test
    predicted = model.predict(test.images.numpy()).argmax(1)
    assert np.isclose((predicted == test.labels.numpy()).mean(), first["test/target_acc"], atol=1e-6)
    second = tiny_run(tmp_path / "2", mlflow_uri, [f"backbone.weights={first['backbone_weights']}", "freeze=linear_probe"])
    loaded = BACKBONES.build(plan_run(second).backbone)
    import pytorch_lightning as pl

    pl.seed_everything(second.seed, workers=True, verbose=False)  # as the run seeded itself before building its parts
    featurizer = BACKBONES.build(second.backbone.__class__(**{**vars(second.backbone), "weights": "none"}))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in featurizer.state_dict().items())


@pytest.mark.slow  # trains
def test_a_cached_probe_is_restored_only_with_the_weights_file_it_was_trained_on(tmp_path, mlflow_uri):
    """The probe's checkpoint holds no backbone (it trained on cached features): load_run rebuilds it from
    `backbone.weights`, so a file replaced since is refused in one line instead of changing predictions."""
    import torch

    import tlbench
    from tlbench.backbones import BACKBONES
    from tlbench.errors import TlbenchError

    base = tiny_run(tmp_path, mlflow_uri, [])
    weights = tmp_path / "backbone.pt"
    torch.save(BACKBONES.build(base.backbone.__class__(**{**vars(base.backbone), "weights": "none"})).state_dict(), weights)
    result = train(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", f"backbone.weights={weights}"]))
    recorded = MlflowClient(mlflow_uri).get_run(result["run_id"])
    assert recorded.data.tags["feature_cache"] == "on" and len(recorded.data.tags["backbone_weights_sha256"]) == 64
    tlbench.load_run(result["run_id"], uri=mlflow_uri)  # the same file: restores
    state = torch.load(weights)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
    with pytest.raises(TlbenchError, match="changed since the run trained"):
        tlbench.load_run(result["run_id"], uri=mlflow_uri)
    weights.unlink()
    with pytest.raises(TlbenchError, match="is gone"):
        tlbench.load_run(result["run_id"], uri=mlflow_uri)


@pytest.mark.slow  # trains
def test_epoch_means_of_training_losses_are_the_means_of_their_steps(tmp_path, mlflow_uri):
    """Training values are summed in the module and logged once per epoch (train_epoch/…), and per step
    only on the steps the logger writes: with every step written, each epoch's mean is their mean."""
    result = train(
        tiny_run(
            tmp_path,
            mlflow_uri,
            ["adapt=dann", "trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "trainer.steps_per_epoch=4", "trainer.log_every_n_steps=1"],
        )
    )
    client = MlflowClient(mlflow_uri)
    steps = [m.value for m in sorted(client.get_metric_history(result["run_id"], "train/loss"), key=lambda m: m.step)]
    epochs = [m.value for m in sorted(client.get_metric_history(result["run_id"], "train_epoch/loss"), key=lambda m: m.step)]
    assert len(steps) == 8 and len(epochs) == 2
    assert epochs == pytest.approx([sum(steps[:4]) / 4, sum(steps[4:]) / 4], rel=1e-5)
    sparse = train(
        tiny_run(
            tmp_path / "b",
            mlflow_uri,
            ["adapt=dann", "trainer.max_epochs=1", "trainer.limit_train_batches=1.0", "trainer.steps_per_epoch=4", "trainer.log_every_n_steps=2"],
        )
    )
    assert [m.step for m in client.get_metric_history(sparse["run_id"], "train/loss")] == [1, 3]


@pytest.mark.slow  # trains
def test_a_runs_description_states_its_result_and_the_rule_that_chose_it(tmp_path, mlflow_uri):
    """The MLflow description (mlflow.note.content) answers "which run won" without opening its metrics."""
    result = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2"]))
    note = MlflowClient(mlflow_uri).get_run(result["run_id"]).data.tags["mlflow.note.content"]
    assert f"target test accuracy {100 * result['test/target_acc']:.2f} %" in note
    assert f"epoch {int(result['selected_epoch'])} of 2, chosen by rule source_val" in note


def test_the_selected_model_carries_the_test_metrics_the_models_tab_shows(tmp_path, mlflow_uri):
    """Every run logs the checkpoint its rule chose as an MLflow logged model whose metrics are the test
    accuracies and the selected epoch (visible columns of the experiment's Models tab, checked in a
    browser), without a second copy of any metric in the run; its data sets fill the runs table's
    Dataset column."""
    result = train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2", "selection=target_entropy"]))
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == result["run_id"] and model.name == "selected-by-target_entropy" and str(model.status) == "READY"
    by_key = {m.key: m.value for m in model.metrics}
    assert by_key["test/target_acc"] == pytest.approx(result["test/target_acc"]) and by_key["selected_epoch"] == result["selected_epoch"]
    assert not any(key.startswith(("train", "val")) for key in by_key)  # only the selected checkpoint's numbers
    assert len(client.get_metric_history(result["run_id"], "test/target_acc")) == 1
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert inputs["source"].digest == run.data.tags["source_fingerprint"][:36] and inputs["source"].name == "synthetic_digits"
    assert inputs["target"].digest == run.data.tags["target_fingerprint"][:36]


class _RacedClient:
    """A real client whose first `log_inputs` loses the race the suite once saw on PostgreSQL: another run
    inserts the same data set between the store's look-up and its insert, and the store refuses the
    duplicate key."""

    def __init__(self, client, rival_run_id):
        self.client, self.rival_run_id, self.refusals = client, rival_run_id, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        if self.refusals == 0 or self.rival_run_id is None:
            self.refusals += 1
            if self.rival_run_id is not None:
                self.client.log_inputs(self.rival_run_id, datasets=datasets)
            raise MlflowException('duplicate key value violates unique constraint "dataset_pk"')
        self.client.log_inputs(run_id, datasets=datasets)


def _two_runs(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("raced")
    return client, client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id


def test_a_data_set_another_run_inserted_first_is_logged_on_the_next_attempt(mlflow_uri):
    from tlbench.tracking import RunRecorder

    client, run_id, rival = _two_runs(mlflow_uri)
    RunRecorder(_RacedClient(client, rival), run_id, mlflow_uri).log_datasets({"source": ("digits", "a" * 64)})
    mine, theirs = (client.get_run(r).inputs.dataset_inputs for r in (run_id, rival))
    assert [i.dataset.digest for i in mine] == ["a" * 36] and mine[0].tags[0].value == "source"
    assert theirs[0].dataset.digest == mine[0].dataset.digest  # one data set row, shared by both runs


def test_a_store_that_keeps_refusing_the_data_set_costs_the_column_not_the_run(mlflow_uri, caplog):
    from tlbench.tracking import DATASET_LOG_ATTEMPTS, RunRecorder

    client, run_id, _ = _two_runs(mlflow_uri)
    refusing = _RacedClient(client, None)
    with caplog.at_level("WARNING", logger="tlbench.tracking"):
        RunRecorder(refusing, run_id, mlflow_uri).log_datasets({"source": ("digits", "b" * 64)})
    assert refusing.refusals == DATASET_LOG_ATTEMPTS
    assert "Dataset column stays empty" in caplog.text and client.get_run(run_id).inputs.dataset_inputs == []
