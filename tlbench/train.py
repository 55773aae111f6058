"""One run end to end: validated config → data, backbone, schedule, method → Lightning → MLflow."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from . import __version__
from .assembly import build_module
from .backbones.weights import runs_resolved_in
from .checkpoint_io import AtomicCheckpointIO
from .config import RunConfig, flatten, to_plain_dict
from .data.datamodule import DomainDataModule
from .errors import ConfigError
from .feature_cache import CachedBackbone
from .interrupts import sigterm_as_interrupt
from .mlflow_logger import MlflowMetricLogger
from .module import TransferModule
from .progress import EpochSummary
from .selection import SELECTION_METRICS
from .threads import intra_op_threads, threads_for
from .tracking import (
    config_hash,
    finished_run_with_hash,
    git_commit,
    recorded_run,
    resolve_uri,
    unfinished_run_with_hash,
)

log = logging.getLogger(__name__)


#: TrainerConfig fields that are tlbench's own, not pl.Trainer arguments.
TLBENCH_TRAINER_FIELDS = ("steps_per_epoch", "feature_cache", "threads", "options")
#: pl.Trainer arguments tlbench sets itself: a run's recording, checkpoints and output folder depend on them.
RESERVED_TRAINER_ARGS = ("logger", "callbacks", "enable_checkpointing", "default_root_dir", "plugins", "num_sanity_val_steps", "enable_model_summary")


def trainer_arguments(t) -> dict[str, Any]:
    """pl.Trainer keyword arguments from a TrainerConfig: its Trainer fields as they are, then
    `options`; a key pl.Trainer does not take, or one tlbench sets itself, is a ConfigError."""
    import inspect

    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(t.options) - accepted)
    if unknown:
        from .suggestions import closest

        raise ConfigError(f"trainer.options.{unknown[0]}: not a pytorch_lightning.Trainer argument{closest(unknown[0], sorted(accepted))}")
    reserved = sorted(set(t.options) & set(RESERVED_TRAINER_ARGS))
    if reserved:
        raise ConfigError(f"trainer.options.{reserved[0]}: tlbench sets it for every run; it cannot be overridden")
    args = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in TLBENCH_TRAINER_FIELDS}
    for limit in ("limit_train_batches", "limit_val_batches"):  # > 1 means a number of batches
        args[limit] = int(args[limit]) if args[limit] > 1 else args[limit]
    args["enable_progress_bar"] = t.enable_progress_bar and sys.stderr.isatty()
    return {**args, **t.options}


def writable_folder(folder: str, setting: str) -> None:
    """Create `folder` now, or one ConfigError line naming the setting to change."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise ConfigError(f"{setting}={folder}: cannot create or write this folder ({exc.strerror or exc}); point {setting} to a writable place") from None


def build_trainer(run: RunConfig, logger, checkpoint: ModelCheckpoint | None, callbacks: list | None = None) -> pl.Trainer:
    """The Lightning Trainer of a run; an accelerator or device count this machine lacks (trainer=gpu on a
    CPU-only machine) is one ConfigError line, not Lightning's traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    arguments = trainer_arguments(run.trainer)
    try:
        return _trainer(run, arguments, logger, checkpoint, callbacks)
    except (MisconfigurationException, RuntimeError) as exc:
        if not isinstance(exc, MisconfigurationException) and "device" not in str(exc).lower():
            raise
        raise ConfigError(
            f"trainer.accelerator={arguments.get('accelerator')} trainer.devices={arguments.get('devices')}: "
            f"{str(exc).splitlines()[0]} on this machine; use trainer=default (CPU) or check the drivers"
        ) from None


def _trainer(run: RunConfig, arguments: dict, logger, checkpoint, callbacks) -> pl.Trainer:
    return pl.Trainer(
        **arguments,
        logger=logger,
        callbacks=([checkpoint] if checkpoint else []) + [EpochSummary()] + (callbacks or []),
        enable_checkpointing=checkpoint is not None,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run.output_dir,
        plugins=[AtomicCheckpointIO()],  # checkpoints complete or absent; an unreadable one is one line
    )


def run_tags(run: RunConfig, datamodule: DomainDataModule, digest: str) -> dict[str, Any]:
    return {
        "config_hash": digest,
        "git_commit": git_commit(),
        "tlbench_version": __version__,
        "dataset": run.data.name,
        "source_domain": run.data.source,
        "target_domain": run.data.target,
        "source_fingerprint": datamodule.source.fingerprint,
        "target_fingerprint": datamodule.target.fingerprint,
        "selection": run.selection,
    }


def default_run_name(run: RunConfig) -> str:
    """tracking.run_name, else what varies most first so that names cut to ~24 characters (the MLflow
    runs table, chart legends) still differ: `dann s0 · linear_probe · small_cnn · digits`. Defaults
    (freeze=full, batch_composition=joint, all source labels) are left out."""
    if run.tracking.run_name:
        return run.tracking.run_name
    parts = [f"{run.adapt.name} s{run.seed}"]
    if run.data.labels_per_class is not None:
        parts.append(f"{run.data.labels_per_class}/class")
    if run.data.label_fraction is not None:
        parts.append(f"{run.data.label_fraction * 100:g}% labels")
    if run.freeze.name != "full":
        parts.append(run.freeze.name)
    if run.batch_composition != "joint":
        parts.append(run.batch_composition)
    return " · ".join([*parts, run.backbone.name, run.data.name])


def selected_epoch(checkpoint: ModelCheckpoint) -> int | None:
    match = re.search(r"epoch(\d+)", Path(checkpoint.best_model_path or "").name)
    return int(match.group(1)) if match else None


def train(run: RunConfig, extra_callbacks: list | None = None, extra_tags: dict[str, Any] | None = None) -> dict[str, float]:
    """Train and test one configuration, recorded as one MLflow run; returns the final metrics.

    With `tracking.skip_done`, a configuration that already has a FINISHED run is not run again.
    """
    # What is alive now (imported libraries, caches) outlives every run: frozen out of the collector's
    # view, the collection below scans only this run's objects (a full collection after the imports
    # took 0.28-0.35 s per run). Garbage made since the last run is collected first, or freezing would
    # keep it forever; that collection too only scans what is not frozen yet.
    gc.collect()
    gc.freeze()
    try:
        return _train(run, extra_callbacks, extra_tags)
    finally:
        # Lightning leaves reference cycles around the module and data; in a long multirun sweep they
        # piled up to several GB before Python's cyclic GC ran (measured: 7 GB after 10 Fashion runs).
        gc.collect()


def _train(run: RunConfig, extra_callbacks: list | None, extra_tags: dict[str, Any] | None) -> dict[str, float]:
    digest = config_hash(run)
    if run.tracking.skip_done:
        done = finished_run_with_hash(run.tracking, digest)
        if done:
            log.info("skip_done: config %s already finished as run %s", digest, done)
            return {"skipped": 1.0, "run_id": done}
    writable_folder(run.checkpoint_dir, "checkpoint_dir")  # before training, not when the first checkpoint is saved
    pl.seed_everything(run.seed, workers=True, verbose=False)
    raw_datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
    source_tags = {}
    with runs_resolved_in(resolve_uri(run.tracking.uri)):  # weights=runs:/... come from this run's store
        module, datamodule, cache_decision = build_module(run, raw_datamodule, TransferModule)
        if not module.adapter.needs.source:
            from .source_model import load_source_model

            source_tags["source_run_id"] = load_source_model(module, run)
    checkpoint_dir = Path(run.checkpoint_dir) / digest
    last = checkpoint_dir / "last.ckpt"
    resume_run_id = unfinished_run_with_hash(run.tracking, digest) if run.resume and last.exists() else None
    if not resume_run_id:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # a fresh run never mixes in an older run's checkpoints
    threads = threads_for(run.trainer.threads, module)
    tags = {
        **run_tags(run, datamodule, digest),
        "feature_cache": cache_decision,
        "batch_composition": module.batch_composition,
        "threads": threads,
        **source_tags,
        **(extra_tags or {}),
    }
    with sigterm_as_interrupt(), intra_op_threads(threads), recorded_run(run.tracking, default_run_name(run), tags, resume_run_id) as recorder:
        if not resume_run_id:
            plain = to_plain_dict(run)
            recorder.log_params({**flatten(plain), **{f"data_summary.{k}": v for k, v in datamodule.summary().items()}})
            recorder.log_text(OmegaConf.to_yaml(OmegaConf.create(plain)), "config.yaml")
        monitor, mode = SELECTION_METRICS[run.selection]
        checkpoint = None
        if not run.trainer.fast_dev_run:
            checkpoint = ModelCheckpoint(  # monitor None (selection=last): the newest epoch is the one kept
                dirpath=checkpoint_dir,
                filename="best-epoch{epoch:03d}",
                auto_insert_metric_name=False,
                monitor=monitor,
                mode=mode if monitor else "max",
                save_top_k=1,
                save_last=True,
            )
        trainer = build_trainer(run, MlflowMetricLogger(recorder), checkpoint, extra_callbacks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume_run_id else None, weights_only=True)
        results = trainer.test(module, datamodule=datamodule, ckpt_path="best" if checkpoint else None, verbose=False, weights_only=True)
        metrics = {k: float(v) for result in results for k, v in result.items()}
        if checkpoint is not None and selected_epoch(checkpoint) is not None:
            metrics["selected_epoch"] = float(selected_epoch(checkpoint))
            recorder.log_metrics({"selected_epoch": metrics["selected_epoch"]}, step=trainer.global_step)
        if recorder.run_id and checkpoint is not None:  # rank 0 records; fast_dev_run selects nothing
            from .run_artifacts import log_run_artifacts

            log_run_artifacts(recorder, module, raw_datamodule, run.output_dir, run.tracking.log_model, run.tracking.plots)
        if run.tracking.log_model and not isinstance(module.backbone, CachedBackbone):
            from .backbones.weights import save_backbone

            path = Path(run.output_dir) / "backbone.pt"
            save_backbone(module.backbone, path)
            recorder.log_artifact(path, "backbone")
        metrics["run_id"] = recorder.run_id  # type: ignore[assignment]
        return metrics
