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
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Sequence

from .config import RunConfig, to_plain_dict, validate
from .errors import TlbenchError

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from .data.datamodule import DomainDataModule
    from .module import TransferModule

__all__ = ["compose", "build", "fit", "record", "load_run", "module_from_checkpoint", "predict", "RunConfig"]

#: Key of the run config inside a checkpoint written by a module that knows its config (see `build`).
CHECKPOINT_KEY = "tlbench"


def compose(overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config of `tlbench <overrides>` (same Hydra composition, same checks)."""
    from .cli import compose as compose_config

    return validate(compose_config(list(overrides)))


def build(run: RunConfig, feature_cache: bool = False) -> tuple["TransferModule", "DomainDataModule"]:
    """The Lightning module and datamodule `tlbench` would train for `run`, seeded as a run is.

    With feature_cache=True a backbone frozen for the whole run is replaced by cached features (faster;
    the module then takes features, not images, so `predict` does not apply)."""
    import pytorch_lightning as pl

    from .data.datamodule import DomainDataModule
    from .train import build_module

    run = dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, feature_cache=feature_cache))
    pl.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
    module, datamodule, _ = build_module(run, datamodule)
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
    metrics and `run_id`. (Not `tlbench.train`: that name is the module tlbench/train.py.)"""
    from .train import train as train_recorded

    return train_recorded(run)


def load_run(run_id: str, uri: str = "", checkpoint_dir: str | Path | None = None, map_location: str = "cpu") -> "TransferModule":
    """The module of a finished MLflow run with the weights of the checkpoint its selection rule chose, in
    eval mode. Checkpoints stay on the machine that trained (`<checkpoint_dir>/<config hash>/`); pass
    checkpoint_dir when it was relative to another working directory."""
    from omegaconf import OmegaConf

    from .tracking import client_for, resolve_uri

    client = client_for(resolve_uri(uri))
    try:
        recorded = client.get_run(run_id)
    except TlbenchError:
        raise
    except Exception as exc:
        raise TlbenchError(f"load_run: no run {run_id} in {resolve_uri(uri)} ({str(exc).splitlines()[0]})") from None
    if "selected_epoch" not in recorded.data.metrics:
        raise TlbenchError(f"load_run: run {run_id} has no selected checkpoint (status {recorded.info.status}); only finished runs do")
    config = OmegaConf.create(Path(client.download_artifacts(run_id, "config.yaml")).read_text())
    run = validate(config)
    folder = Path(checkpoint_dir or run.checkpoint_dir) / recorded.data.tags["config_hash"]
    best = sorted(folder.glob("best-*.ckpt"))  # the run keeps one: save_top_k=1
    if not best:
        raise TlbenchError(f"load_run: no selected checkpoint of run {run_id} in {folder}; pass checkpoint_dir= (the run's was '{run.checkpoint_dir}')")
    return module_from_checkpoint(best[-1], run, map_location, batch_composition=recorded.data.tags.get("batch_composition"))


def module_from_checkpoint(
    path: str | Path, run_config: RunConfig | dict | None = None, map_location: str | None = "cpu", batch_composition: str | None = None,
) -> "TransferModule":
    """A TransferModule rebuilt from its config with the checkpoint's weights, in eval mode. The config is
    the one stored in the checkpoint, else `run_config`. A backbone that trained on cached features has no
    weights in the checkpoint and keeps the ones its config names (e.g. pretrained)."""
    import torch

    from .train import build_module

    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    stored = checkpoint.get(CHECKPOINT_KEY, {})
    if run_config is None and "run" not in stored:
        raise TlbenchError(f"{path}: the checkpoint does not carry its run config; pass run_config= or use tlbench.load_run(run_id)")
    run = run_config if run_config is not None else stored["run"]
    run = run if isinstance(run, RunConfig) else validate(run)
    state = checkpoint["state_dict"]
    has_backbone = any(key.startswith("backbone.") for key in state)
    if has_backbone and hasattr(run.backbone, "weights"):  # the checkpoint has them: no download
        run = dataclasses.replace(run, backbone=dataclasses.replace(run.backbone, weights="none"))
    composition = stored.get("batch_composition") or batch_composition or run.batch_composition
    run = dataclasses.replace(
        run, batch_composition=composition,
        trainer=dataclasses.replace(run.trainer, feature_cache=False), data=dataclasses.replace(run.data, augment="none"),
    )
    head_weights = [value for key, value in state.items() if key.startswith("head.") and key.endswith(".weight")]
    domain = SimpleNamespace(hflip_ok=False)  # augmentations only shape training, which this module will not do
    wiring = SimpleNamespace(num_classes=int(head_weights[-1].shape[0]), in_domain=run.data.source == run.data.target,
                             source=domain, target=domain, serve=lambda adapter, composition: None)
    module, _, _ = build_module(run, wiring)  # type: ignore[arg-type]  (the wiring needs only these)
    missing, unexpected = module.load_state_dict(state, strict=False)
    optional = ("adapter.",) + (() if has_backbone else ("backbone.",))  # method layers only shape training
    if unexpected or [key for key in missing if not key.startswith(optional)]:
        raise TlbenchError(f"{path}: weights do not fit the config's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    module.run_config = to_plain_dict(run)
    return module.eval()


def checked_images(images: Any) -> "torch.Tensor":
    """Raw images as the model takes them, or one DataError line: N × C × H × W; uint8, or other integers
    holding 0..255 (read as uint8), or finite floats in [0, 1]. (Floats holding 0..255 would otherwise
    give quietly different probabilities.)"""
    import torch

    from .errors import DataError

    try:
        images = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"images: not an array of numbers ({str(exc).splitlines()[0]})") from None
    if images.ndim != 4 or images.shape[1] not in (1, 3) or min(images.shape) == 0:
        raise DataError(f"images: expected N × C × H × W with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise DataError(f"images: expected uint8 or floats in [0, 1], got {images.dtype}")
    if images.is_floating_point():
        if not torch.isfinite(images).all():
            raise DataError("images: NaN or infinite values")
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 1:
            raise DataError(f"images: float images must lie in [0, 1], got {low:g}..{high:g} (divide 0..255 values by 255, or pass uint8)")
        return images
    if images.dtype != torch.uint8:
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 255:
            raise DataError(f"images: integer images must lie in 0..255, got {low}..{high}")
        images = images.to(torch.uint8)
    return images


def predict(module: "TransferModule", images: "torch.Tensor", domain: str = "target", batch_size: int = 256) -> "torch.Tensor":
    """Class probabilities (N × classes) for raw images (N × C × H × W, uint8 or floats in [0, 1]; see
    checked_images), with the module in eval mode; `domain` picks the BatchNorm copy of a
    batch_composition=domain_bn model."""
    import torch

    from .domain_bn import batchnorm_domain

    images = checked_images(images)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), batchnorm_domain(module, domain):
            device = next(module.parameters()).device
            return torch.cat([module(chunk.to(device)).softmax(1).cpu() for chunk in images.split(batch_size)])
    finally:
        module.train(was_training)
