"""The Python API: the documented example runs as written, a loaded run predicts exactly as it was
tested, and TransferModule.load_from_checkpoint rebuilds a model from a checkpoint."""

from __future__ import annotations

import textwrap

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY, tiny_run

import tlbench
from tlbench import api
from tlbench.checkpoint_io import CHECKPOINT_KEY
from tlbench.errors import TlbenchError
from tlbench.module import TransferModule


def example_code() -> str:
    """The indented code block of tlbench/api.py's docstring (the README example)."""
    lines = api.__doc__.split("\n\n", 1)[1].split("\n`TransferModule")[0].splitlines()
    return textwrap.dedent("\n".join(line for line in lines if line.startswith("    ") or not line.strip()))


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_documented_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its mlflow.db and checkpoints/ go here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # an earlier run's mlflow.set_tracking_uri sets it
    exec(compile(example_code(), "api-example", "exec"), {})
    out = capsys.readouterr().out
    assert "target batch accuracy:" in out and "MLflow run" in out and "its predictions on the batch:" in out
    assert (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_load_run_predicts_as_the_run_was_tested(tmp_path, mlflow_uri):
    from tlbench.data.datamodule import DomainDataModule
    from tlbench.train import train

    run = tiny_run(tmp_path, mlflow_uri, ["adapt=dann"])
    metrics = train(run)
    module = tlbench.load_run(metrics["run_id"], uri=mlflow_uri)
    assert not module.training
    test = DomainDataModule(run.data, run.seed).target.test
    images, labels = zip(*(test[i] for i in range(len(test))))
    scores = tlbench.predict(module, torch.stack(images))
    assert scores.shape == (len(test), 10) and torch.allclose(scores.sum(1), torch.ones(len(test)))
    accuracy = (scores.argmax(1) == torch.as_tensor(labels)).float().mean().item()
    assert accuracy == pytest.approx(metrics["test/target_acc"], abs=1e-6)


def test_load_from_checkpoint_rebuilds_the_model(tmp_path):
    run = tlbench.compose([*TINY, "trainer.max_epochs=1"])
    module, data = tlbench.build(run)
    saving = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="model")
    tlbench.fit(module, data, callbacks=[saving], enable_checkpointing=True, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False)
    images = next(iter(data.test_dataloader()[1]))[0]
    loaded = TransferModule.load_from_checkpoint(tmp_path / "model.ckpt")
    assert torch.allclose(tlbench.predict(loaded, images), tlbench.predict(module, images), atol=1e-6)

    # a checkpoint written without the config (e.g. by the `tlbench` command) needs it given
    bare = torch.load(tmp_path / "model.ckpt", weights_only=True)
    del bare[CHECKPOINT_KEY]
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(TlbenchError, match="run_config"):
        TransferModule.load_from_checkpoint(tmp_path / "bare.ckpt")
    given = TransferModule.load_from_checkpoint(tmp_path / "bare.ckpt", run_config=run)
    assert torch.allclose(tlbench.predict(given, images), tlbench.predict(module, images), atol=1e-6)


def test_predict_accepts_what_the_docs_say_and_refuses_the_rest_in_one_line():
    import numpy as np

    from tlbench.errors import DataError

    module, _ = tlbench.build(tlbench.compose(["backbone=small_cnn", "data=digits", "data.synthetic_size=200"]))
    generator = np.random.default_rng(0)
    raw = generator.integers(0, 256, (4, 3, 20, 20)).astype(np.uint8)
    reference = tlbench.predict(module, raw)
    # the same pixels as int64 0..255 and as floats in [0, 1] give the same probabilities
    assert torch.allclose(tlbench.predict(module, raw.astype(np.int64)), reference, atol=1e-6)
    assert torch.allclose(tlbench.predict(module, raw.astype(np.float32) / 255), reference, atol=1e-5)
    cases = {
        "float images must lie in \\[0, 1\\], got 0..255": raw.astype(np.float32) * (255 / max(raw.max(), 1)),
        "NaN or infinite": np.full((2, 3, 20, 20), np.nan, dtype=np.float32),
        "expected N × C × H × W": raw[0],
        "integer images must lie in 0..255": raw.astype(np.int64) * 2 - 300,
        "expected uint8 or floats": raw > 100,
    }
    for message, images in cases.items():
        with pytest.raises(DataError, match=message) as caught:
            tlbench.predict(module, images)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.slow  # a process that trains
def test_record_from_python_is_as_quiet_as_the_command(tmp_path):
    """The API keeps Lightning's INFO lines (GPU available, trainer settings, tips) out, as the CLI does."""
    import subprocess
    import sys

    code = (
        "import tlbench\n"
        "run = tlbench.compose(['backbone=small_cnn', 'data.synthetic_size=300', 'trainer.max_epochs=1', 'trainer.limit_train_batches=2',"
        f" 'trainer.enable_progress_bar=false', 'tracking.uri=sqlite:///{tmp_path}/m.db'])\n"
        "print('acc', tlbench.record(run)['test/target_acc'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "acc " in result.stdout
    chatter = [line for line in (result.stdout + result.stderr).splitlines() if "GPU available" in line or "TPU available" in line or "LitLogger" in line]
    assert not chatter, chatter
