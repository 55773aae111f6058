"""Typed schemas for the composed run config, and validation into a RunConfig.

Groups whose keys depend on the chosen implementation (backbone, freeze, adapt) are validated by their
registry against that implementation's own dataclass; fixed-shape groups (data, optim, trainer,
tracking) have one schema each. Every failure becomes a one-line ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .registry import describe_omegaconf_error


@dataclass
class DataConfig:
    name: str = "digits"
    #: Domains as `family` or `family:argument`; target == source means in-domain evaluation.
    source: str = "synthetic_digits"
    target: str = "sklearn_digits"
    #: Several source domains (domain generalisation), e.g. [rotated_fashion:0, rotated_fashion:15]: they
    #: are pooled into one labelled source whose batches can carry each example's domain index, each with
    #: its own splits and label budget; the target, if listed, is left out (so a leave-one-domain-out sweep
    #: varies only data.target). None: the single `source`.
    sources: Optional[list[str]] = None
    #: One of the source domains kept out of training and measured every epoch on all its images
    #: (`val/holdout_acc`): DomainBed's leave-one-domain-out selection, rule `leave_one_out`, which
    #: averages the runs that each hold out one source (experiments/dg_colored_fashion shows the sweep).
    holdout: Optional[str] = None
    #: Folder holding user-provided datasets; defaults to $TLBENCH_DATA, then ~/.cache/tlbench/data.
    root: Optional[str] = None
    batch_size: int = 64
    #: Label budget for the labelled (source) training set: at most one of these.
    labels_per_class: Optional[int] = None
    label_fraction: Optional[float] = None
    #: Cap on the labelled source validation split, images per class (stratified, fixed for a seed): at
    #: small label budgets a validation split larger than the training budget is labels a practitioner
    #: would have trained on. None = the whole split.
    val_labels_per_class: Optional[int] = None
    #: What the target test accuracy is measured on: `split` (the target's held-out test split) or `whole`
    #: (every target image, as TLlib's Office-31 protocol does; its unlabelled training images included).
    target_eval: str = "split"
    #: Augmentation preset applied to training batches: none | standard | strong.
    augment: str = "none"
    num_workers: int = 0
    #: Size of synthetic source sets (where the family generates its data).
    synthetic_size: int = 6000
    #: Image side for folder datasets decoded to fixed-size tensors.
    image_size: int = 64


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    #: SGD only: Nesterov momentum (TLlib) or plain heavy-ball momentum (the DANN paper).
    nesterov: bool = True
    #: Learning-rate schedule: constant | cosine | dann (Ganin: (1+10p)^-0.75 over progress p) |
    #: inv (TLlib: (1 + inv_gamma·step)^-inv_power over absolute optimizer steps).
    scheduler: str = "cosine"
    inv_gamma: float = 0.001
    inv_power: float = 0.75
    #: Multipliers on lr for the backbone (on top of the freezing schedule's per-stage scales), the new
    #: layers (bottleneck + classifier) and the method's own layers (e.g. the domain discriminator).
    #: TLlib's recipe: backbone 0.1, new layers 1.0.
    backbone_lr_scale: float = 1.0
    head_lr_scale: float = 1.0
    adapter_lr_scale: float = 1.0


@dataclass
class HeadConfig:
    #: Hidden sizes of an MLP head; empty for a linear head.
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    #: TLlib's bottleneck Linear→bottleneck→BN→ReLU between backbone and classifier; when set, the
    #: adaptation loss sees the bottleneck's output instead of the backbone's.
    bottleneck: Optional[int] = None
    #: How the head is fitted: `optimizer` (optim.* for trainer.max_epochs, like every other layer) or
    #: `lbfgs`, the linear probe of linear-probe papers: full-batch L-BFGS logistic regression on the
    #: cached features, L2 strength optim.weight_decay, one L-BFGS step (up to 20 iterations) per epoch.
    solver: str = "optimizer"


@dataclass
class TrainerConfig:
    max_epochs: int = 5
    #: Optimizer steps per epoch, independent of dataset size and label budget (both training streams
    #: cycle, reshuffled each pass); null = one pass over the larger stream. Total steps are then
    #: max_epochs × steps_per_epoch for every method and label budget.
    steps_per_epoch: Optional[int] = None
    #: Fraction (≤1.0) or number (>1) of training batches per epoch.
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    log_every_n_steps: int = 10
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    gradient_clip_val: Optional[float] = None
    #: Cache the outputs of a backbone that stays frozen for the whole run (used only where valid).
    feature_cache: bool = True
    #: Train the jobs of one sweep that differ only in their heads (same cached features, data, seed and
    #: schedule) together, one pass over the batches for all (tlbench/fused_heads.py); each is still
    #: recorded as its own run. Results equal unfused runs to float tolerance; false trains them one by one.
    fuse_heads: bool = True
    #: Intra-op CPU threads: null = auto (1 for a head on cached features, where more threads only cost
    #: CPU; else the process's setting), N = exactly N (1 when several sweep workers share the cores).
    threads: Optional[int] = None
    #: Any other `pytorch_lightning.Trainer` argument, passed as is (e.g. `+trainer.options.accumulate_grad_batches=4`,
    #: `+trainer.options.benchmark=true`); the fields above are Trainer arguments too, except the tlbench-only ones
    #: (train.TLBENCH_TRAINER_FIELDS). Arguments tlbench sets itself (logger, callbacks, ...) are refused.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrackingConfig:
    #: MLflow tracking URI; empty means $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db in the working dir.
    uri: str = ""
    experiment: str = "tlbench"
    run_name: str = ""
    #: Extra tags for every run of this config.
    tags: dict[str, str] = field(default_factory=dict)
    #: The selected model as an MLflow model (`runs:/<id>/model`): null = only small models (≤ 1M
    #: parameters, see run_artifacts); true = always, plus the backbone alone for `backbone.weights=runs:/...`.
    log_model: Optional[bool] = None
    #: Per-run plots (learning curves, confusion matrices): ~0.15 s each on a 2-core CPU. Turn off for
    #: grids of hundreds of seconds-long runs; sweep parents and reports draw their own.
    plots: bool = True
    #: The analysis DA papers show (tlbench/analysis.py): the proxy A-distance between source and target
    #: test features (metric `analysis/a_distance`) and their t-SNE embedding (`plots/embedding.png`), on
    #: the selected model. A few seconds per run: off by default, on in the presets that reproduce papers.
    analysis: bool = False
    #: Skip a run whose config hash already has a FINISHED run in the experiment.
    skip_done: bool = False
    #: Seconds any wait on the tracking store may take (a remote server, a SQLite file locked by another process).
    timeout_s: int = 20


@dataclass
class RunConfig:
    backbone: Any = None
    freeze: Any = None
    adapt: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    #: Which metric chooses the checkpoint: source_val (default, honest) | oracle (target labels) |
    #: target_entropy, im, bnm, snd, dev, devn, classami (label-free validators) | last.
    selection: str = "source_val"
    #: BatchNorm batch composition of a training step (see config_rules.BATCH_COMPOSITIONS); recorded with every run.
    batch_composition: str = "joint"
    #: Where checkpoints and per-run files go; Hydra sets it to the job's output dir.
    output_dir: str = "outputs"
    #: Checkpoints go to <checkpoint_dir>/<config hash>/, so `resume=true` with the same config finds them.
    checkpoint_dir: str = "checkpoints"
    #: Continue the newest unfinished (KILLED/FAILED) run of this exact config from its last epoch.
    resume: bool = False


#: Groups whose yaml options extend their dataclass (`defaults: [schema]`) and list only what differs,
#: so each default has one home: the dataclass field, with its comment.
GROUP_SCHEMAS = {"data": DataConfig, "trainer": TrainerConfig, "tracking": TrackingConfig}


def register_schemas() -> None:
    """Store each GROUP_SCHEMAS dataclass as its group's `schema` option. Called when Hydra scans its
    plugins (hydra_plugins/tlbench_schemas), which every compose path does before reading a yaml.
    Hydra then also type-checks overrides of these groups at compose time."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)


def _typed(group: str, schema: type, node: Any) -> Any:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(group, schema, exc)) from None


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Check a composed config completely before anything trains; return it typed."""
    from .adapt import ADAPTERS
    from .backbones import BACKBONES
    from .freeze import SCHEDULES
    from .suggestions import unknown_key

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    for key in container:
        if key not in known:
            raise ConfigError(unknown_key(key, known, "the top level"))
    for group in ("backbone", "freeze", "adapt"):
        if container.get(group) is None:
            raise ConfigError(f"{group}: missing; choose one with {group}=<option>")
    run = RunConfig(
        backbone=BACKBONES.validate(container["backbone"]),
        freeze=SCHEDULES.validate(container["freeze"]),
        adapt=ADAPTERS.validate(container["adapt"]),
        data=_typed("data", DataConfig, container.get("data", {})),
        head=_typed("head", HeadConfig, container.get("head", {})),
        optim=_typed("optim", OptimConfig, container.get("optim", {})),
        trainer=_typed("trainer", TrainerConfig, container.get("trainer", {})),
        tracking=_typed("tracking", TrackingConfig, container.get("tracking", {})),
        **{k: container[k] for k in ("seed", "selection", "batch_composition", "output_dir", "checkpoint_dir", "resume") if k in container},
    )
    _check_values(run)
    return run


def source_names(sources: list[str], target: str) -> list[str]:
    """The source domains of a run: the list without the target (leave-one-domain-out sweeps pass every
    domain and vary the target), each once; at least one must remain."""
    kept = [s for s in sources if s != target]
    if len(set(kept)) != len(kept):
        raise ConfigError(f"data.sources: a domain is listed twice in {sources}")
    if not kept:
        raise ConfigError(f"data.sources: no source domain left once the target '{target}' is taken out; list at least one other domain")
    return kept


def held_out_sources(sources: list[str] | None, target: str, holdout: str) -> list[str]:
    """The training sources of a leave-one-domain-out run: the sources without the target and without
    `holdout`, which must be one of them; at least one must remain to train on."""
    if not sources:
        raise ConfigError(f"data.holdout={holdout}: a held-out domain needs several sources (data.sources)")
    kept = source_names(sources, target)
    if holdout not in kept:
        why = "it is the target" if holdout == target else "it is not one of data.sources"
        raise ConfigError(f"data.holdout={holdout}: {why}; hold out one of the training sources: {', '.join(kept)}")
    if len(kept) < 2:
        raise ConfigError(f"data.holdout={holdout}: no source domain left to train on once it is held out")
    return [s for s in kept if s != holdout]


def training_sources(data: "DataConfig") -> list[str]:
    """The source domains a run with several (data.sources) trains on: without its target and without
    its held-out domain (data.holdout)."""
    return source_names(data.sources, data.target) if data.holdout is None else held_out_sources(data.sources, data.target, data.holdout)


def _check_values(run: RunConfig) -> None:
    """Every field against its rule in config_rules (ranges, choices, finite floats), then the rules
    that involve more than one field."""
    from .config_rules import check_values

    if not isinstance(run.seed, int) or isinstance(run.seed, bool):
        raise ConfigError(f"seed: expected an integer, got {run.seed!r}")
    check_values(run)
    if run.data.labels_per_class is not None and run.data.label_fraction is not None:
        raise ConfigError("data: set at most one of labels_per_class and label_fraction")
    if run.data.sources or run.data.holdout is not None:
        training_sources(run.data)  # the sources left to train on: a bad list is an error now, not at build
    if run.data.target_eval == "whole" and run.data.target == run.data.source and not run.data.sources:  # with several sources the target is never one of them
        raise ConfigError(
            "data.target_eval=whole: the target is the source domain here, so its whole domain includes "
            "the labelled training images; use target_eval=split for in-domain runs"
        )
    if run.head.solver == "lbfgs":
        _check_lbfgs_probe(run)


def _check_lbfgs_probe(run: RunConfig) -> None:
    """head.solver=lbfgs is logistic regression on fixed features: one linear layer, source labels only,
    the whole training split as one batch."""
    if run.head.hidden or run.head.bottleneck:
        raise ConfigError("head.solver=lbfgs fits a linear classifier (logistic regression); set head.hidden=[] and head.bottleneck=null")
    if run.adapt.name != "source_only":
        raise ConfigError(f"head.solver=lbfgs fits the head on source labels alone; adapt={run.adapt.name} needs a gradient optimizer (head.solver=optimizer)")
    if run.trainer.steps_per_epoch is not None:
        raise ConfigError("head.solver=lbfgs takes the whole training split as one batch per epoch; leave trainer.steps_per_epoch unset")


def to_plain_dict(run: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(run)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: the MLflow params of a run."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
