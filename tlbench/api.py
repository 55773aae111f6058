"""tlbench from Python: compose a config, build the Lightning module and its data, fit them with a
`pl.Trainer` of your own, record a run as the `tlbench` command does, load a finished run back
with its selected weights, and predict. (tests/test_api.py runs this example.)

    import pytorch_lightning as pl
    import tlbench

    run = tlbench.compose(["backbone=small_cnn", "adapt=dann", "data.synthetic_size=400", "trainer.max_epochs=1", "trainer.steps_per_epoch=10"])

    # 1. Your own training loop: a LightningModule and a LightningDataModule, nothing recorded.
    module, data = tlbench.build(run)
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False).fit(module, datamodule=data)
    images, labels = next(iter(data.test_dataloader()[1]))  # a batch of the target test set
    scores = tlbench.predict(module, images)                 # class probabilities, one row per image
    print("target batch accuracy:", (scores.argmax(1) == labels).float().mean().item())

    # 2. The same config trained and recorded in MLflow as the `tlbench` command does, then loaded back.
    result = tlbench.record(run)                         # sqlite:///mlflow.db unless tracking.uri says
    print("MLflow run", result["run_id"], "test target accuracy", result["test/target_acc"])
    loaded = tlbench.load_run(result["run_id"])          # weights of the checkpoint its selection rule chose
    print("its predictions on the batch:", tlbench.predict(loaded, images).argmax(1)[:10].tolist())

`TransferModule.load_from_checkpoint(path)` works for every checkpoint tlbench writes (they carry their run
config); checkpoints from before that need `run_config=` (see `module_from_checkpoint`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .composition import compose
from .config import RunConfig

if TYPE_CHECKING:  # the heavy imports (torch, Lightning) wait for the first call that needs them
    import pytorch_lightning as pl
    import torch

    from .data.datamodule import DomainDataModule
    from .module import TransferModule

__all__ = ["compose", "build", "fit", "record", "load_run", "module_from_checkpoint", "predict", "RunConfig"]


def build(run: RunConfig, feature_cache: bool = False) -> tuple["TransferModule", "DomainDataModule"]:
    """The Lightning module and datamodule `tlbench` would train for `run`, seeded as a run is.

    With feature_cache=True a backbone frozen for the whole run is replaced by cached features (faster;
    the module then takes features, not images, so `predict` does not apply)."""
    import pytorch_lightning as pl

    from .assembly import build_module
    from .data.datamodule import DomainDataModule
    from .module import TransferModule
    from .plan import plan_run

    run = dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, feature_cache=feature_cache))
    plan = plan_run(run)
    pl.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
    module, datamodule, _ = build_module(plan, datamodule, TransferModule)
    return module, datamodule


def fit(module: "TransferModule", datamodule: "DomainDataModule", trainer: "pl.Trainer | None" = None, **trainer_args: Any) -> "pl.Trainer":
    """`trainer.fit(module, datamodule=datamodule)`; without a trainer, a plain `pl.Trainer(**trainer_args)`
    with the run's epochs and no logger or checkpoints of its own. Returns the trainer."""
    import pytorch_lightning as pl

    if trainer is not None and trainer_args:
        raise TypeError(f"fit: pass a trainer or trainer arguments, not both (got {', '.join(trainer_args)})")
    if trainer is None:
        max_epochs = (module.run_config or {}).get("trainer", {}).get("max_epochs", 1)
        defaults = {"max_epochs": max_epochs, "logger": False, "enable_checkpointing": False, "enable_model_summary": False}
        trainer = pl.Trainer(**{**defaults, **trainer_args})
    trainer.fit(module, datamodule=datamodule)
    return trainer


def record(run: RunConfig) -> dict[str, Any]:
    """Train and test `run` exactly as the `tlbench` command does, recorded in MLflow; returns the final
    metrics and `run_id`, and as quietly: Lightning's and MLflow's INFO chatter is kept to warnings, as
    the command keeps it. (Not `tlbench.train`: that name is the module tlbench/train.py.)"""
    from .console import quiet_libraries
    from .train import train as train_recorded

    quiet_libraries()
    return train_recorded(run)


def load_run(run_id: str, uri: str = "", checkpoint_dir: str | Path | None = None, map_location: str = "cpu") -> "TransferModule":
    """The module of a finished MLflow run with the weights of the checkpoint its selection rule chose, in
    eval mode. Checkpoints stay on the machine that trained (`<checkpoint_dir>/<config hash>/`); pass
    checkpoint_dir when it was relative to another working directory."""
    from .module import TransferModule
    from .restore import load_run as load_recorded

    return load_recorded(run_id, uri, checkpoint_dir, map_location, module_class=TransferModule)


def module_from_checkpoint(
    path: str | Path, run_config: RunConfig | dict | None = None, map_location: str | None = "cpu", batch_composition: str | None = None
) -> "TransferModule":
    """A TransferModule rebuilt from its config with the checkpoint's weights, in eval mode (the config
    stored in the checkpoint, else `run_config`); see tlbench/restore.py."""
    from .module import TransferModule

    return TransferModule.load_from_checkpoint(path, map_location, run_config, batch_composition)


def predict(module: "TransferModule", images: "torch.Tensor", domain: str = "target", batch_size: int = 256) -> "torch.Tensor":
    """Class probabilities (N × classes) for raw images (N × C × H × W, uint8 or floats in [0, 1]); see
    tlbench/prediction.py."""
    from .prediction import predict as predict_probabilities

    return predict_probabilities(module, images, domain, batch_size)
