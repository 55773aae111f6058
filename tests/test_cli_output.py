"""What a run prints: the end-of-sweep table fits a 120-column terminal, its `selected epoch` counts
like the per-epoch log line (epoch 1/N), and the progress bar carries no `v_num`."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest
from helpers import tiny_run

from tlbench.runs import SUMMARY_WIDTH, load_runs, summary_table
from tlbench.train import train


def test_summary_table_fits_the_width_and_cuts_long_names():
    runs = pd.DataFrame(
        {
            "run_name": ["dann s0 · small_cnn · digits", "x" * 300],
            "status": ["FINISHED", "FAILED"],
            "metrics.test/target_acc": [0.51234, float("nan")],
            "metrics.test/source_acc": [0.9, float("nan")],
            "metrics.selected_epoch": [1.0, float("nan")],
            "tags.epochs_counted_from": ["1", None],
        }
    )
    lines = summary_table(runs).splitlines()
    assert max(len(line) for line in lines) <= SUMMARY_WIDTH
    assert len(lines[3].split("|")[1].strip()) >= 50  # what is cut is the run name, and only that
    assert "dann s0 · small_cnn · digits" in lines[2] and "…" in lines[3]
    assert "0.5123" in lines[2] and "0.9000" in lines[2]
    assert re.search(r"\|\s+1 \|$", lines[2]), lines[2]  # the first epoch, "epoch 1/N" in the log
    assert "nan" not in lines[3]


def test_the_summary_table_says_which_runs_collapsed():
    runs = pd.DataFrame({"run_name": ["a", "b", "c"], "status": ["FINISHED", "FINISHED", "FAILED"], "tags.collapsed": ["true", "false", None]})
    statuses = [line.split("|")[2].strip() for line in summary_table(runs).splitlines()[2:]]
    assert statuses == ["FINISHED (collapsed)", "FINISHED", "FAILED"]
    assert "collapsed" not in summary_table(runs.drop(columns="tags.collapsed"))  # runs recorded before the tag


def test_runs_recorded_before_epochs_were_numbered_show_the_same_epoch():
    """Runs recorded before the `epochs_counted_from` tag hold Lightning's 0-based index: 0 is epoch 1."""
    runs = pd.DataFrame({"run_name": ["old", "new"], "status": ["FINISHED"] * 2, "metrics.selected_epoch": [0.0, 1.0], "tags.epochs_counted_from": [None, "1"]})
    assert [line.rstrip("| ").split("|")[-1].strip() for line in summary_table(runs).splitlines()[2:]] == ["1", "1"]
    assert summary_table(runs.drop(columns="tags.epochs_counted_from")).splitlines()[3].rstrip("| ").endswith("2")


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_selected_epoch_is_the_logged_epoch_with_the_best_validation(tmp_path, mlflow_uri, caplog):
    """The table's epoch is the 1-based epoch whose logged val/source_acc selected the checkpoint."""
    caplog.set_level(logging.INFO, logger="tlbench")
    train(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=2"]))
    logged = {int(m.group(1)): float(m.group(2)) for m in (re.search(r"epoch (\d+)/2 .*val/source_acc=([\d.]+)", r.getMessage()) for r in caplog.records) if m}
    assert sorted(logged) == [1, 2]
    best = min(epoch for epoch, acc in logged.items() if acc == max(logged.values()))  # ties: the first best
    row = summary_table(load_runs(mlflow_uri)).splitlines()[2]
    assert row.rstrip("| ").split("|")[-1].strip() == str(best), (row, logged)


def test_progress_bar_shows_no_run_version():
    import pytorch_lightning as pl
    from pytorch_lightning.loggers.logger import DummyLogger

    from tlbench.progress import EpochSummary

    class Versioned(DummyLogger):
        @property
        def version(self):
            return "6f3e0c4aa95e"

    summary = EpochSummary()
    trainer = pl.Trainer(logger=Versioned(), callbacks=[summary], enable_progress_bar=True, enable_checkpointing=False)
    module = pl.LightningModule()
    bar = trainer.progress_bar_callback
    assert "v_num" in bar.get_metrics(trainer, module)  # what Lightning shows by default
    summary.setup(trainer, module, "fit")
    assert "v_num" not in bar.get_metrics(trainer, module)


def test_sweep_size_counts_command_line_overrides_over_a_presets_sweep_params():
    """experiment=da_digits sweeps 6 methods × 3 seeds; `adapt=shot` on the command line replaces the
    preset's adapt list (Hydra's rule), so the sweep has 3 jobs, not 18 (or 6 × 1 × 3)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tlbench.hydra_callbacks import sweep_size
    from tlbench.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for overrides, jobs in (
            (["experiment=da_digits"], 18),
            (["experiment=da_digits", "adapt=shot"], 3),
            (["experiment=da_digits", "adapt=shot", "seed=0,1"], 2),
            (["adapt=dann,coral", "seed=0,1"], 4),
        ):
            preset = [o for o in overrides if o.startswith("experiment=")]  # compose takes no sweeps; the task list does
            config = hydra_compose(config_name="config", overrides=preset, return_hydra_config=True)
            config.hydra.overrides.task = overrides
            assert sweep_size(config) == jobs, overrides


def test_swept_keys_are_those_given_several_values_on_the_command_line_or_by_a_preset():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tlbench.hydra_callbacks import swept_keys
    from tlbench.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = hydra_compose(config_name="config", overrides=["experiment=da_digits"], return_hydra_config=True)
        config.hydra.overrides.task = ["experiment=da_digits", "adapt=shot", "optim.lr=0.1,0.01"]
        assert swept_keys(config) == ["optim.lr", "seed"]  # adapt=shot replaces the preset's list of methods


def test_table_labels_show_a_dash_where_a_key_was_not_recorded():
    from tlbench.report.tables import as_text

    assert as_text(pd.Series(["0.9", None, float("nan"), 3])).tolist() == ["0.9", "–", "–", "3"]


def test_the_ui_hint_is_the_server_url_for_a_server_and_mlflow_ui_for_a_local_store():
    from tlbench.tracking import ui_hint

    assert ui_hint("http://127.0.0.1:5000").startswith("open http://127.0.0.1:5000")
    assert "--backend-store-uri" not in ui_hint("https://mlflow.example.org")
    assert ui_hint("sqlite:///tmp/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:///tmp/mlflow.db")


@pytest.mark.slow  # starts a process
def test_trainer_gpu_without_a_gpu_is_one_line_and_a_failed_run(tmp_path, mlflow_uri):
    import subprocess
    import sys

    import pytest
    import torch
    from helpers import TINY
    from mlflow.tracking import MlflowClient

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", *TINY, "trainer=gpu", f"tracking.uri={mlflow_uri}", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlbench: error:")]
    assert len(errors) == 1 and "trainer.accelerator=gpu" in errors[0] and "trainer=default" in errors[0]
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tlbench").experiment_id])
    assert run.info.status == "FAILED" and "trainer.accelerator=gpu" in run.data.tags["failure_reason"]


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_the_feature_cache_line_appears_only_where_the_backbone_could_be_cached(tmp_path, mlflow_uri, caplog):
    with caplog.at_level(logging.DEBUG, logger="tlbench.assembly"):
        train(tiny_run(tmp_path / "full", mlflow_uri, ["trainer.max_epochs=1"]))
        full = [r for r in caplog.records if "feature cache" in r.getMessage()]
        caplog.clear()
        train(tiny_run(tmp_path / "probe", mlflow_uri, ["trainer.max_epochs=1", "freeze=linear_probe"]))
        probe = [r for r in caplog.records if "feature cache" in r.getMessage()]
    assert [r.levelno for r in full] == [logging.DEBUG]  # fine-tuning: nothing to say on the console
    assert [(r.levelno, r.getMessage()) for r in probe] == [(logging.INFO, "feature cache: on")]


@pytest.mark.slow  # starts a process
def test_output_dir_given_on_the_command_line_is_where_the_run_writes(tmp_path, mlflow_uri):
    import subprocess
    import sys

    from helpers import TINY

    out = tmp_path / "mine"
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", *TINY, f"tracking.uri={mlflow_uri}", f"output_dir={out}", f"hydra.run.dir={tmp_path}/job"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model" / "MLmodel").is_file()  # the selected model is saved where the user said
    assert not (tmp_path / "job" / "model").exists()


def test_a_runs_weights_file_is_fetched_once_and_leaves_no_temporary_folder(tmp_path, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cache"))
    from tlbench.backbones.weights import resolve_checkpoint
    from tlbench.paths import cache_dir

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("weights")).info.run_id
    (tmp_path / "backbone.pt").write_bytes(b"weights")
    client.log_artifact(run_id, str(tmp_path / "backbone.pt"), "backbone")
    first = resolve_checkpoint(f"runs:/{run_id}/backbone/backbone.pt", mlflow_uri)
    assert first.read_bytes() == b"weights"
    client.delete_run(run_id)  # a second fetch would now fail: the cached file is what answers
    assert resolve_checkpoint(f"runs:/{run_id}/backbone/backbone.pt", mlflow_uri) == first
    assert [p.name for p in cache_dir("runs").iterdir()] == [first.parent.parent.name]  # no staging folder left
