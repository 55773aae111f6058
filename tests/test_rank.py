"""`tlbench rank`: scores recorded in a real MLflow store equal the estimators on independently computed
features; zoo members are found by tag with their runs:/ weights and source head; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tlbench.errors import ConfigError, WeightsError
from tlbench.rank import rank, ranking_table, split_arguments
from tlbench.transferability import knn_accuracy, leep, logme, nce

ROOT = Path(__file__).resolve().parent.parent
TASK = ["data=handwritten", "data.labels_per_class=5", "seed=1"]


def labelled_split():
    """The images `tlbench` would train on for TASK: handwritten digits, 5 per class, seed 1."""
    from tlbench.api import compose
    from tlbench.data.datamodule import DomainDataModule

    run = compose(TASK)
    return DomainDataModule(run.data, run.seed).source_train


def features_of(backbone, images) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(backbone.preprocessing(images)).double()


def runs_of(uri: str, experiment: str):
    from tlbench.runs import load_runs

    return load_runs(uri, experiment)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_scores_are_the_estimators_on_the_candidates_features_and_one_run_each(mlflow_uri):
    from tlbench.api import compose
    from tlbench.backbones import BACKBONES

    rows = rank(["candidates=[small_cnn_random,lenet]", *TASK, f"tracking.uri={mlflow_uri}"])
    labelled = labelled_split()
    labels = labelled.labels.numpy()
    by_name = {row["candidate"]: row for row in rows}
    for name, backbone_option, weights in [("small_cnn_random", "small_cnn", "none"), ("lenet", "lenet", "none")]:
        torch.manual_seed(1)  # the seed of the task: random-init candidates are reproducible
        backbone = BACKBONES.build(compose([*TASK, f"backbone={backbone_option}", f"backbone.weights={weights}"]).backbone)
        features = features_of(backbone, labelled.images).numpy()
        assert features.shape == (50, backbone.out_features)
        assert by_name[name]["rank/logme"] == pytest.approx(logme(features, labels), rel=1e-4)
        assert by_name[name]["rank/knn"] == pytest.approx(knn_accuracy(features, labels))
        assert "rank/leep" not in by_name[name]  # no source head
    recorded = runs_of(mlflow_uri, "rank")
    assert sorted(recorded["tags.rank_candidate"]) == ["lenet", "small_cnn_random"]
    assert set(recorded["status"]) == {"FINISHED"}
    assert set(recorded["params.data.labels_per_class"]) == {"5"}
    assert [row["candidate"] for row in rows] == sorted(by_name, key=lambda n: -by_name[n]["rank/logme"])

    # skip_done: the same command again reads the recorded scores instead of scoring again
    again = rank(["candidates=[small_cnn_random,lenet]", *TASK, f"tracking.uri={mlflow_uri}", "tracking.skip_done=true"])
    assert {r["run_id"] for r in again} == {r["run_id"] for r in rows}
    assert len(runs_of(mlflow_uri, "rank")) == 2
    assert {r["candidate"]: r["rank/logme"] for r in again} == pytest.approx({r["candidate"]: r["rank/logme"] for r in rows})


def zoo_member(uri: str, name: str, tmp_path) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """A FINISHED run in experiment `zoo` tagged zoo_member=<name> with backbone/backbone.pt and head/head.pt,
    as experiments/ranking/zoo.py leaves it (weights made up here; the store and artifacts are real)."""
    from tlbench.api import compose
    from tlbench.backbones import BACKBONES
    from tlbench.backbones.weights import save_backbone
    from tlbench.tracking import client_for, experiment_id

    torch.manual_seed(7)
    backbone = BACKBONES.build(compose(["backbone=small_cnn"]).backbone)
    head = torch.nn.Linear(backbone.out_features, 4)  # 4 source classes
    client = client_for(uri)
    run_id = client.create_run(experiment_id(client, "zoo"), tags={"zoo_member": name}).info.run_id
    client.log_artifact(run_id, str(save_backbone(backbone, tmp_path / "backbone.pt")), "backbone")
    torch.save(head.state_dict(), tmp_path / "head.pt")
    client.log_artifact(run_id, str(tmp_path / "head.pt"), "head")
    client.set_terminated(run_id, "FINISHED")
    return backbone, head


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_zoo_candidate_uses_its_runs_weights_and_source_head_for_leep_and_nce(mlflow_uri, tmp_path):
    backbone, head = zoo_member(mlflow_uri, "small_cnn_fashion", tmp_path)
    rows = rank(["candidates=[small_cnn_fashion]", *TASK, f"tracking.uri={mlflow_uri}"])
    labelled = labelled_split()
    labels = labelled.labels.numpy()
    features = features_of(backbone, labelled.images)
    probs = head.double()(features).softmax(1).detach().numpy()
    assert rows[0]["rank/logme"] == pytest.approx(logme(features.numpy(), labels), rel=1e-4)
    assert rows[0]["rank/leep"] == pytest.approx(leep(probs, labels), rel=1e-4)
    assert rows[0]["rank/nce"] == pytest.approx(nce(probs, labels), rel=1e-4)
    recorded = runs_of(mlflow_uri, "rank")
    assert recorded["params.backbone.weights"].iloc[0].startswith("runs:/")
    assert recorded["tags.source_head"].iloc[0] == "zoo"
    assert "| small_cnn_fashion |" in ranking_table(rows)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_efficientnet_imagenet_head_on_our_features_is_the_full_imagenet_network(mlflow_uri):
    from tlbench.backbones.efficientnet_lite0 import load_efficientnet_lite0_imagenet_classifier

    rows = rank(["candidates=[efficientnet_lite0_imagenet]", *TASK, f"tracking.uri={mlflow_uri}", "estimators=[leep]"])
    labelled = labelled_split()
    net = load_efficientnet_lite0_imagenet_classifier()
    from tlbench.api import compose
    from tlbench.backbones import BACKBONES

    preprocessing = BACKBONES.build(compose(["backbone=efficientnet_lite0"]).backbone).preprocessing
    with torch.no_grad():
        probs = net(preprocessing(labelled.images)).softmax(1).double().numpy()  # timm's whole network
    assert probs.shape[1] == 1000
    assert rows[0]["rank/leep"] == pytest.approx(leep(probs, labelled.labels.numpy()), rel=1e-3)
    assert set(rows[0]) >= {"rank/leep"} and "rank/logme" not in rows[0]  # only the estimators asked for


def test_a_zoo_candidate_missing_from_the_store_names_the_command_that_builds_it(mlflow_uri):
    with pytest.raises(WeightsError, match="experiments/ranking/zoo.py"):
        rank(["candidates=[lenet_digits]", *TASK, f"tracking.uri={mlflow_uri}"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["data=handwritten"], "candidates: missing"),
        (["candidates=[small_cnn,resnet_9000]"], "unknown candidate 'resnet_9000'"),
        (["candidates=[small_cnn]", "estimators=[logme,vibes]"], "estimators: unknown 'vibes'"),
        (["candidates=[small_cnn"], "candidates: cannot parse"),
    ],
)
def test_bad_arguments_raise_one_line(args, message):
    from tlbench.rank import load_candidate

    with pytest.raises(ConfigError, match=message) as caught:
        [load_candidate(n) for n in split_arguments(args)[0]]
    assert "\n" not in str(caught.value)


@pytest.mark.slow  # starts a process
def test_cli_bad_candidate_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", "rank", "candidates=[small_cnn,nope]", "data=handwritten"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("tlbench: error: candidates: unknown candidate 'nope'; choose from ")
    assert "small_cnn_fashion" in result.stderr and not (tmp_path / "m.db").exists()  # nothing recorded


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_zoo_recipes_and_benchmark_tasks_compose():
    """Every zoo member and every benchmark (task, backbone) is a valid tlbench config, so the one-command
    builds fail here rather than half-way through."""
    import importlib.util

    from tlbench.api import compose
    from tlbench.rank import load_candidate

    def load(name):
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "ranking" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    zoo, benchmark = load("zoo"), load("benchmark")
    import yaml

    zoo_spec = yaml.safe_load(zoo.SPEC.read_text())
    for name in zoo_spec["members"]:
        run = compose(zoo.member_overrides(zoo_spec, name))
        assert load_candidate(name).weights == "zoo" and load_candidate(name).backbone == run.backbone.name
        assert run.data.source == run.data.target  # pretrained in-domain on its own labels
    for overrides in benchmark.SPEC["tasks"].values():
        for name in benchmark.SPEC["candidates"]:
            run = compose([*overrides, f"backbone={load_candidate(name).backbone}", *benchmark.SPEC["finetune"]["common"]])
            assert run.data.labels_per_class == 10 and run.data.source == run.data.target


def test_weighted_tau_and_regret_of_the_benchmark_by_hand():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "experiments" / "ranking" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    index = pd.MultiIndex.from_product([["task"], ["a", "b", "c", "d"]])
    accuracy = [0.9, 0.8, 0.7, 0.6]
    table = pd.DataFrame(
        {
            "full_mean": accuracy,
            "logme": [4.0, 3.0, 2.0, 1.0],
            "knn": [1.0, 2.0, 3.0, 4.0],
            "leep": [1.0, 4.0, 3.0, 2.0],
            "nce": [np.nan] * 4,
            "hscore": [np.nan, 1, 2, 3],
        },
        index=index,
    )
    taus = benchmark.weighted_tau(table).set_index("estimator")
    assert taus.loc["logme", "tau_w"] == pytest.approx(1.0) and taus.loc["logme", "top1_regret"] == 0
    assert taus.loc["knn", "tau_w"] == pytest.approx(-1.0) and taus.loc["knn", "top1_regret"] == pytest.approx(30.0)
    assert taus.loc["leep", "top1_regret"] == pytest.approx(10.0)  # picks b (0.8) instead of a (0.9)
    assert "nce" not in taus.index  # no candidate scored
    assert taus.loc["hscore", "candidates"] == 3


@pytest.mark.slow
def test_the_zoo_builder_run_from_another_folder_keeps_everything_in_that_folder(tmp_path, monkeypatch):
    """A relative --uri is the caller's store, checkpoints and outputs go under the caller's folder, and the
    member's head is exported there: nothing lands in the repository."""
    import importlib.util

    import yaml
    from mlflow.tracking import MlflowClient

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("zoo_builder", root / "experiments" / "ranking" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    tiny_spec = tmp_path / "zoo.yaml"
    tiny_spec.write_text(
        yaml.safe_dump(
            {
                "common": ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.synthetic_size=400", "trainer.enable_progress_bar=false"],
                "members": {"tiny": ["backbone=small_cnn", "data=digits"]},
            }
        )
    )
    monkeypatch.setattr(zoo, "SPEC", tiny_spec)
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    monkeypatch.chdir(caller)
    before = {p.name for p in root.iterdir()}
    assert zoo.main(["--uri", "sqlite:///zoo.db"]) == 0
    assert (caller / "zoo.db").exists() and (caller / "checkpoints" / "zoo").is_dir() and (caller / "outputs" / "zoo" / "tiny").is_dir()
    assert {p.name for p in root.iterdir()} == before
    client = MlflowClient(f"sqlite:///{caller / 'zoo.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("zoo").experiment_id])
    assert "head/head.pt" in [f.path for f in client.list_artifacts(run.info.run_id, "head")]
