"""A finished run's artifacts: its selected model as an MLflow pyfunc model that predicts class scores on
raw images, learning curves and confusion matrices, within the size budget of a tiny run."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from helpers import tiny_run
from mlflow.tracking import MlflowClient

import tlbench
from tlbench.data.datamodule import DomainDataModule
from tlbench.run_artifacts import AUTO_MODEL_MAX_PARAMS, should_log_model
from tlbench.train import train


def _artifact_sizes(client, run_id: str, path: str | None = None) -> dict[str, int]:
    sizes = {}
    for item in client.list_artifacts(run_id, path):
        sizes.update(_artifact_sizes(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return sizes


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_run_logs_a_pyfunc_model_that_predicts_like_the_selected_checkpoint(tmp_path, mlflow_uri):
    run = tiny_run(tmp_path, mlflow_uri, ["adapt=dann"])
    result = train(run)
    client = MlflowClient(mlflow_uri)
    sizes = _artifact_sizes(client, result["run_id"])
    assert {"model/MLmodel", "plots/learning_curves.png", "plots/confusion_source_test.png", "plots/confusion_target_test.png"} <= set(sizes)
    assert sum(sizes.values()) < 3_000_000, sizes  # a tiny run stays small
    assert any(path.startswith("model/") and path.endswith("model.ckpt") for path in sizes)

    raw = DomainDataModule(run.data, run.seed)
    images = raw.target.test.images[:16].numpy()  # uint8 N×C×H×W, as the datasets store them
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{result['run_id']}/model")
    scores = model.predict(images)
    assert scores.shape == (16, raw.num_classes)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    selected = tlbench.load_run(result["run_id"], uri=mlflow_uri)  # the checkpoint its selection rule chose
    np.testing.assert_allclose(scores, tlbench.predict(selected, torch.as_tensor(images)).numpy(), atol=1e-5)
    inputs = model.metadata.get_input_schema().inputs[0]
    assert tuple(inputs.shape[1:]) == images.shape[1:] and inputs.type == np.dtype("uint8")
    requirements = client.download_artifacts(result["run_id"], "model/requirements.txt", str(tmp_path))
    first = open(requirements).read().splitlines()[0]
    assert first.startswith("tlbench") and ("@ git+" in first or first == f"tlbench=={tlbench.__version__}")  # its loader imports tlbench


@pytest.mark.parametrize(
    "log_model, params, expected",
    [
        (None, AUTO_MODEL_MAX_PARAMS, True),
        (None, AUTO_MODEL_MAX_PARAMS + 1, False),
        (True, AUTO_MODEL_MAX_PARAMS + 1, True),
        (False, 10, False),
    ],
)
def test_models_are_logged_automatically_only_when_small(log_model, params, expected):
    module = torch.nn.Linear(params - 1, 1)  # weight (params-1) + bias 1
    assert should_log_model(log_model, module) is expected


def test_confusion_matrices_come_from_the_test_pass_and_match_its_accuracy(tmp_path, mlflow_uri):
    import pytorch_lightning as pl

    module, datamodule = tlbench.build(tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1"]))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=datamodule)
    (results,) = [{k: v for r in trainer.test(module, datamodule=datamodule, verbose=False) for k, v in r.items()}]
    confusion = module.test_confusion()
    assert set(confusion) == {"test/source", "test/target"}
    for split, counts in confusion.items():
        assert counts.shape == (10, 10) and counts.sum() == len(getattr(datamodule, split.split("/")[1]).test)
        assert (counts.diag().sum() / counts.sum()).item() == pytest.approx(results[f"{split}_acc"], abs=1e-6)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_plots_can_be_turned_off_for_large_grids(tmp_path, mlflow_uri):
    result = train(tiny_run(tmp_path, mlflow_uri, ["tracking.plots=false", "tracking.log_model=false"]))
    sizes = _artifact_sizes(MlflowClient(mlflow_uri), result["run_id"])
    assert sizes and not any(path.startswith("plots/") for path in sizes)


def test_the_learning_curve_has_whole_epoch_ticks():
    from types import SimpleNamespace

    from tlbench.run_artifacts import learning_curves

    metric = lambda step, value: SimpleNamespace(step=step, value=value)  # noqa: E731
    client = SimpleNamespace(get_metric_history=lambda run_id, name: [metric(s, 0.5 + 0.1 * s) for s in range(3)])
    figure = learning_curves(SimpleNamespace(client=client, run_id="r"))
    figure.canvas.draw()
    ticks = [t for t in figure.axes[0].get_xticks() if figure.axes[0].get_xlim()[0] <= t <= figure.axes[0].get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
