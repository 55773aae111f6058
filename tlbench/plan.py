"""A run decided before it runs: from a validated RunConfig, one immutable RunPlan holding everything
that does not need the model or the data to exist — the store (URI resolved once, one client for the
whole run), `runs:/` weights fetched to a local file before any backbone is built, the source model of a
source-free run, the method's declared needs, the checkpoint folder and monitor, the Trainer's arguments,
the run's name, static tags and config hash.

What needs the built parts (the batch composition a method can drop to, whether the backbone's features
can be cached) is decided by tlbench/assembly.py when it builds them from the plan; train.py executes a
plan and records it. One run is: compose → validate → plan → assemble → execute → record.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .adapt.base import Needs, needs_of
from .backbones.weights import RUNS_PREFIX, WEIGHTS_DIGEST_TAG, resolve_checkpoint, weights_file_digest
from .config import RunConfig, training_sources
from .errors import ConfigError
from .selection import SELECTION_METRICS
from .tracking import Store, config_hash, git_commit

#: TrainerConfig fields that are tlbench's own, not pl.Trainer arguments.
TLBENCH_TRAINER_FIELDS = ("steps_per_epoch", "feature_cache", "fuse_heads", "threads", "options")
#: pl.Trainer arguments tlbench sets itself: a run's recording, checkpoints and output folder depend on them.
RESERVED_TRAINER_ARGS = ("logger", "callbacks", "enable_checkpointing", "default_root_dir", "plugins", "num_sanity_val_steps", "enable_model_summary")


@dataclass(frozen=True)
class RunPlan:
    #: The validated config: what is recorded, hashed and stored in checkpoints.
    run: RunConfig
    store: Store
    config_hash: str
    run_name: str
    #: What the method reads and changes (adapt/base.py): the datamodule and module are shaped by it.
    needs: Needs
    #: The backbone to build: `runs:/` weights replaced by the fetched local file, and no weights at all
    #: when the freezing schedule trains from scratch.
    backbone: Any
    #: The recorded run a source-free method starts from (None for every other method).
    source_run_id: str | None
    checkpoint_dir: Path
    #: The metric the selection rule checkpoints on (None: the last epoch) and its direction.
    monitor: str | None
    monitor_mode: str
    trainer_arguments: dict[str, Any]
    #: Tags known before training (the data's fingerprints are added once the data is loaded).
    tags: dict[str, str]


def plan_run(run: RunConfig, store: Store | None = None) -> RunPlan:
    """The plan of `run`. The store is touched only when the run names something recorded in it (a
    `runs:/` backbone, a source model); a plain run plans without any tracking request."""
    from .freeze import SCHEDULES

    store = store or Store.of(run.tracking)
    digest = config_hash(run)
    needs = needs_of(run.adapt)
    backbone = run.backbone
    if not SCHEDULES.build(run.freeze).uses_pretrained:
        backbone = dataclasses.replace(backbone, weights="none")
    else:
        backbone = local_backbone(backbone, store)
    source_run = None
    if not needs.source:
        from .source_model import source_run_id

        source_run = source_run_id(run, store)
    monitor, mode = SELECTION_METRICS[run.selection]
    tags = {
        "config_hash": digest,
        "git_commit": git_commit(),
        "tlbench_version": __version__,
        "dataset": run.data.name,
        "source_domain": "+".join(training_sources(run.data)) if run.data.sources else run.data.source,
        "target_domain": run.data.target,
        "selection": run.selection,
        **({"source_run_id": source_run} if source_run else {}),
        **({WEIGHTS_DIGEST_TAG: weights_digest} if (weights_digest := weights_file_digest(getattr(run.backbone, "weights", ""))) else {}),
    }
    return RunPlan(
        run=run,
        store=store,
        config_hash=digest,
        run_name=default_run_name(run),
        needs=needs,
        backbone=backbone,
        source_run_id=source_run,
        checkpoint_dir=Path(run.checkpoint_dir) / digest,
        monitor=monitor,
        monitor_mode=mode if monitor else "max",
        trainer_arguments=trainer_arguments(run.trainer),
        tags=tags,
    )


def local_backbone(backbone, store: Store):
    """The backbone config with `runs:/` weights fetched from `store` to a local file (others unchanged),
    so that building a backbone never talks to a tracking store."""
    if not str(getattr(backbone, "weights", "")).startswith(RUNS_PREFIX):
        return backbone
    return dataclasses.replace(backbone, weights=str(resolve_checkpoint(backbone.weights, store.uri)))


def trainer_arguments(t) -> dict[str, Any]:
    """pl.Trainer keyword arguments from a TrainerConfig: its Trainer fields as they are, then
    `options`; a key pl.Trainer does not take, or one tlbench sets itself, is a ConfigError."""
    import inspect

    import pytorch_lightning as pl

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


#: Config keys (and groups) the default run name already shows in its own words.
NAMED_KEYS = frozenset(
    {"adapt", "adapt.name", "seed", "data.labels_per_class", "data.label_fraction", "freeze", "freeze.name", "batch_composition"}
    | {"backbone", "backbone.name", "data", "data.name"}
)


def default_run_name(run: RunConfig, swept: Sequence[tuple[str, str]] = ()) -> str:
    """tracking.run_name, else what varies most first so that names cut to ~24 characters (the MLflow
    runs table, chart legends) still differ: `dann s0 · linear_probe · small_cnn · digits`. Defaults
    (freeze=full, batch_composition=joint, all source labels) are left out. `swept`: the (key, value) pairs
    a sweep varies for this run; those the name does not already show follow the method and seed by the
    key's last part (`dann s0 · lr=0.01 · …`), so the runs of a learning-rate sweep differ by name too."""
    if run.tracking.run_name:
        return run.tracking.run_name
    parts = [f"{run.adapt.name} s{run.seed}"]
    parts += [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in swept if key not in NAMED_KEYS]
    if run.data.labels_per_class is not None:
        parts.append(f"{run.data.labels_per_class}/class")
    if run.data.label_fraction is not None:
        parts.append(f"{run.data.label_fraction * 100:g}% labels")
    if run.freeze.name != "full":
        parts.append(run.freeze.name)
    if run.batch_composition != "joint":
        parts.append(run.batch_composition)
    return " · ".join([*parts, run.backbone.name, run.data.name])


def writable_folder(folder: str | Path, setting: str) -> None:
    """Create `folder` now, or one ConfigError line naming the setting to change."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise ConfigError(f"{setting}={folder}: cannot create or write this folder ({exc.strerror or exc}); point {setting} to a writable place") from None
