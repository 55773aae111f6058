"""One run end to end: a validated config is planned (plan.py), assembled (assembly.py), then executed
here: Lightning fits, selects and tests it, and MLflow records it."""

from __future__ import annotations

import gc
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from .assembly import build_module
from .collapse import collapse_of
from .config import RunConfig, flatten, to_plain_dict
from .data.datamodule import DomainDataModule
from .feature_cache import on_images
from .fused_heads import FusedOutcome, take_outcome
from .interrupts import sigterm_as_interrupt
from .mlflow_logger import MlflowMetricLogger, numbered_epochs
from .module import TransferModule
from .plan import RunPlan, plan_run, writable_folder
from .runs import EPOCHS_TAG
from .threads import intra_op_threads, threads_for
from .tracking import ClaimedElsewhere, Store, config_hash, finished_run_with_hash, recorded_run, unfinished_run_with_hash
from .trainer_factory import build_trainer

log = logging.getLogger(__name__)


class EpochNumberedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint naming its files by the epoch's number (`best-epoch003.ckpt` is the
    third epoch), as every recorded and printed epoch counts."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        return super().format_checkpoint_name(numbered_epochs(metrics), filename, ver, prefix)


def selected_epoch(checkpoint: ModelCheckpoint) -> int | None:
    """The number of the epoch whose weights the checkpoint kept (1 = the first)."""
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
    store = Store.of(run.tracking)
    if run.tracking.skip_done:
        digest = config_hash(run)
        done = finished_run_with_hash(store, digest)
        if done:
            log.info("skip_done: config %s already finished as run %s", digest, done)
            return {"skipped": 1.0, "run_id": done}
        try:
            return execute(plan_run(run, store), extra_callbacks, extra_tags)
        except ClaimedElsewhere as claimed:  # a sweep started beside this one runs it
            log.info("skip_done: config %s is being run by another process as run %s", digest, claimed.run_id)
            return {"skipped": 1.0, "run_id": claimed.run_id}
    return execute(plan_run(run, store), extra_callbacks, extra_tags)


def execute(plan: RunPlan, extra_callbacks: list | None = None, extra_tags: dict[str, Any] | None = None) -> dict[str, float]:
    """Train, select and test the plan's run under Lightning, recorded in the plan's store. A run its sweep
    already trained in a fused group of heads (fused_heads.py) is recorded from that outcome instead."""
    run = plan.run
    writable_folder(run.checkpoint_dir, "checkpoint_dir")  # before training, not when the first checkpoint is saved
    fused = take_outcome(plan.config_hash) if not extra_callbacks else None
    if fused is not None:
        member = fused.member
        raw_datamodule, module, datamodule, cache_decision = member.raw_datamodule, member.module, member.datamodule, member.cache_decision
    else:
        pl.seed_everything(run.seed, workers=True, verbose=False)
        raw_datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
        module, datamodule, cache_decision = build_module(plan, raw_datamodule, TransferModule)
    if plan.source_run_id:
        from .source_model import load_source_model

        load_source_model(module, plan)
    last = plan.checkpoint_dir / "last.ckpt"
    resume_run_id = unfinished_run_with_hash(plan.store, plan.config_hash) if run.resume and last.exists() else None
    threads = threads_for(run.trainer.threads, module)
    tags = {
        **plan.tags,
        "source_fingerprint": datamodule.source.fingerprint,
        "target_fingerprint": datamodule.target.fingerprint,
        "feature_cache": cache_decision,
        "batch_composition": module.batch_composition,
        "threads": threads,
        EPOCHS_TAG: "1",
        **({"fused_heads": f"trained in a group of {fused.group_size}"} if fused else {}),
        **(extra_tags or {}),
    }
    with (
        sigterm_as_interrupt(),
        intra_op_threads(threads),
        recorded_run(plan.store, plan.run_name, tags, resume_run_id, claim=run.tracking.skip_done) as recorder,
    ):
        if not resume_run_id:
            # a fresh run never mixes in an older run's checkpoints; cleared only once this process holds the
            # configuration (skip_done's claim), or it would delete the checkpoints of a run going on elsewhere
            shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
            plain = to_plain_dict(run)
            recorder.log_params({**flatten(plain), **{f"data_summary.{k}": v for k, v in datamodule.summary().items()}})
            recorder.log_text(OmegaConf.to_yaml(OmegaConf.create(plain)), "config.yaml")
            recorder.log_datasets({role: (domain.name, domain.fingerprint) for role, domain in (("source", datamodule.source), ("target", datamodule.target))})
        if fused is not None:
            metrics, epoch, step, model_id = _test_fused(plan, fused, recorder)
        else:
            metrics, epoch, step, model_id = _fit_and_test(plan, module, datamodule, recorder, resume_run_id, extra_callbacks)
        collapse = collapse_of(module.test_confusion())
        chosen = {**({"selected_epoch": float(epoch)} if epoch is not None else {}), **collapse.metrics}
        if chosen:  # what the selected model is: its epoch, and whether it collapsed
            metrics.update(chosen)
            recorder.log_metric_points([(chosen, step, int(time.time() * 1000))], model_id=model_id)
        if collapse.tags():
            recorder.set_tags(collapse.tags())
        collapse_line = collapse.message()
        if collapse_line:
            log.warning(collapse_line)
        if model_id:
            recorder.finish_selected_model(model_id)
        if recorder.run_id and not run.trainer.fast_dev_run:  # rank 0 records; fast_dev_run selects nothing
            from .run_artifacts import log_run_artifacts

            log_run_artifacts(recorder, module, raw_datamodule, run.output_dir, run.tracking.log_model, run.tracking.plots, run.tracking.analysis)
        if run.tracking.log_model and recorder.run_id:
            from .backbones.weights import save_backbone

            path = Path(run.output_dir) / "backbone.pt"
            with on_images(module) as whole:
                save_backbone(whole.backbone, path)
            recorder.log_artifact(path, "backbone")
            metrics["backbone_weights"] = f"runs:/{recorder.run_id}/backbone/backbone.pt"  # type: ignore[assignment]
        if recorder.run_id:
            recorder.set_tags({"mlflow.note.content": run_description(metrics, run.selection, run.trainer.max_epochs, collapse_line)})
        metrics["run_id"] = recorder.run_id  # type: ignore[assignment]
        return metrics


def _fit_and_test(plan: RunPlan, module, datamodule, recorder, resume_run_id: str | None, extra_callbacks) -> tuple[dict, int | None, int, str | None]:
    """Lightning fits (checkpointing the rule's choice) and tests the chosen checkpoint: the test metrics,
    the selected epoch, the step they are recorded at and the selected model's id."""
    checkpoint = None
    if not plan.run.trainer.fast_dev_run:
        checkpoint = EpochNumberedCheckpoint(  # monitor None (selection=last): the newest epoch is the one kept
            dirpath=plan.checkpoint_dir,
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=plan.monitor,
            mode=plan.monitor_mode,
            save_top_k=1,
            save_last=True,
        )
    last = plan.checkpoint_dir / "last.ckpt"
    logger = MlflowMetricLogger(recorder)
    trainer = build_trainer(plan, logger, checkpoint, extra_callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume_run_id else None, weights_only=True)
    model_id = logger.model_id = recorder.start_selected_model(plan.run.selection) if checkpoint is not None and recorder.run_id else None
    results = trainer.test(module, datamodule=datamodule, ckpt_path="best" if checkpoint else None, verbose=False, weights_only=True)
    metrics = {k: float(v) for result in results for k, v in result.items()}
    return metrics, selected_epoch(checkpoint) if checkpoint is not None else None, trainer.global_step, model_id


def _test_fused(plan: RunPlan, fused: FusedOutcome, recorder) -> tuple[dict, int | None, int, str | None]:
    """Record what the run's fused group trained (its points, or its own failure), then test its selected
    weights and keep them as the run's checkpoint, as an unfused run would."""
    recorder.log_metric_points(fused.points)
    if fused.error is not None:
        raise fused.error
    module, datamodule = fused.member.module, fused.member.datamodule
    module.load_state_dict(fused.state)
    logger = MlflowMetricLogger(recorder)
    model_id = logger.model_id = recorder.start_selected_model(plan.run.selection) if recorder.run_id else None
    trainer = build_trainer(plan, logger, None)
    # test metrics at the step and epoch the fit ended on, where an unfused run records them
    trainer.fit_loop.epoch_loop._batches_that_stepped = fused.global_step
    trainer.fit_loop.epoch_progress.current.completed = fused.current_epoch
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(plan.checkpoint_dir / f"best-epoch{fused.epoch:03d}.ckpt", weights_only=True)
    return {k: float(v) for result in results for k, v in result.items()}, fused.epoch, fused.global_step, model_id


def run_description(metrics: dict[str, Any], rule: str, epochs: int, collapse: str | None = None) -> str:
    """The run's result in one line, as its MLflow description: the runs table and the run page show it
    without opening a hundred metric columns; a collapse (collapse.py) leads it."""
    parts = [collapse] if collapse else []
    if "test/target_acc" in metrics:
        parts.append(f"target test accuracy {100 * metrics['test/target_acc']:.2f} %")
    if "test/source_acc" in metrics:
        parts.append(f"source test accuracy {100 * metrics['test/source_acc']:.2f} %")
    if "selected_epoch" in metrics:
        parts.append(f"epoch {int(metrics['selected_epoch'])} of {epochs}, chosen by rule {rule}")
    return " · ".join(parts) or "no test result"
