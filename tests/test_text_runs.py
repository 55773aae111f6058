"""Whole runs on the text task (generated Debian index, bundled MiniLM): every freezing schedule, DANN and
CORAL across the synopsis → description shift, the feature cache for a frozen encoder, and the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONF_DIR, compose
from text_helpers import write_debian_index

from tlbench.config import validate
from tlbench.data import debian
from tlbench.train import train

SCHEDULES = sorted(p.stem for p in (CONF_DIR / "freeze").glob("*.yaml"))


@pytest.fixture
def text_root(tmp_path, monkeypatch) -> Path:
    """A generated index only (the machine's apt lists hidden): a few hundred short texts."""
    monkeypatch.setattr(debian, "SYSTEM_LISTS", tmp_path / "no-apt-lists")
    write_debian_index(tmp_path / "data" / "debian", sources_per_section=6)
    return tmp_path / "data"


def text_run(tmp_path, root: Path, uri: str, extra: list[str]):
    run = validate(
        compose(
            [
                "backbone=minilm",
                "backbone.max_length=24",
                f"data.root={root}",
                "data.batch_size=8",
                "trainer.max_epochs=2",
                "trainer.steps_per_epoch=2",
                "trainer.enable_progress_bar=false",
                "tracking.plots=false",
                f"tracking.uri={uri}",
                *extra,
            ]
        )
    )
    run.output_dir, run.checkpoint_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
    return run


def tags_of(uri: str, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id).data.tags


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_freezing_schedule_trains_on_text(schedule, tmp_path, text_root, mlflow_uri):
    from tlbench.freeze import SCHEDULES as BUILT

    run = text_run(tmp_path, text_root, mlflow_uri, ["data=debian_sections", f"freeze={schedule}"])
    metrics = train(run)
    accuracy = metrics["test/target_acc"]
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(metrics["test/target_loss"])
    cache = tags_of(mlflow_uri, metrics["run_id"])["feature_cache"]
    # exactly the schedules that never train an encoder stage within the run use cached features
    never_trains = BUILT.build(run.freeze).always_frozen_prefix(7, run.trainer.max_epochs) == 7
    assert (cache == "on") == never_trains, cache


@pytest.mark.parametrize("method, freeze", [("dann", "full"), ("coral", "linear_probe")])
def test_da_methods_run_across_the_synopsis_to_description_shift(method, freeze, tmp_path, text_root, mlflow_uri):
    extra = ["data=debian_synopsis_to_description", f"adapt={method}", f"freeze={freeze}", "head.bottleneck=16"]
    metrics = train(text_run(tmp_path, text_root, mlflow_uri, extra))
    assert 0.0 <= metrics["test/target_acc"] <= 1.0 and 0.0 <= metrics["test/source_acc"] <= 1.0
    tags = tags_of(mlflow_uri, metrics["run_id"])
    assert tags["target_fingerprint"] != tags["source_fingerprint"]
    assert (tags["feature_cache"] == "on") == (freeze == "linear_probe")


def test_a_cached_linear_probe_learns_the_generated_topics(tmp_path, text_root, mlflow_uri):
    """Frozen MiniLM features + a linear head separate the eleven generated topics well above chance (1/11)."""
    extra = ["data=debian_sections", "freeze=linear_probe", "optim.lr=0.05", "trainer.max_epochs=4", "trainer.steps_per_epoch=20"]
    metrics = train(text_run(tmp_path, text_root, mlflow_uri, extra))
    assert metrics["test/target_acc"] > 0.5


@pytest.mark.slow  # a fresh process: ~10 s of imports before the run
def test_the_cli_runs_the_text_task_offline(tmp_path, text_root):
    command = [sys.executable, "-m", "tlbench", "backbone=minilm", "data=debian_synopsis_to_description", f"data.root={text_root}", "freeze=linear_probe"]
    command += ["trainer.max_epochs=1", "trainer.steps_per_epoch=2", "trainer.enable_progress_bar=false", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    command += [f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = dict(os.environ, TLBENCH_OFFLINE="1", HF_HUB_OFFLINE="1")
    # <data root>/debian/ comes first in the search, so the generated index is the one read
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FINISHED" in done.stdout


def test_a_logged_text_model_predicts_from_raw_texts(tmp_path, text_root, mlflow_uri):
    """The run's MLflow model takes texts as the data stores them (UTF-8 rows) and returns probabilities."""
    import mlflow.pyfunc

    from tlbench.data.text import encode_texts

    extra = ["data=debian_sections", "freeze=linear_probe", "tracking.log_model=true", "trainer.max_epochs=1"]
    metrics = train(text_run(tmp_path, text_root, mlflow_uri, extra))
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{metrics['run_id']}/model")
    width = model.metadata.get_input_schema().inputs[0].shape[1]  # rows are zero-padded to the run's data width
    rows = encode_texts(["arcade game with levels and monsters", "email client and mail transfer agent"], limit=width)
    probabilities = model.predict(torch.nn.functional.pad(rows, (0, width - rows.shape[1])).numpy())
    assert probabilities.shape == (2, len(debian.SECTIONS))
    assert abs(float(probabilities.sum(1).min()) - 1) < 1e-4


def test_image_augmentation_on_texts_is_a_one_line_config_error(tmp_path, text_root, mlflow_uri):
    from tlbench.errors import ConfigError

    with pytest.raises(ConfigError, match="augmentations are for images") as error:
        train(text_run(tmp_path, text_root, mlflow_uri, ["data=debian_sections", "freeze=full", "data.augment=standard"]))
    assert "\n" not in str(error.value)
