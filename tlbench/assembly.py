"""Assemble what a run trains from its plan: backbone (with its freezing schedule's weights), head,
bottleneck and the method's layers in a TransferModule, the datamodule shaped to the method's needs, and
the decisions that need the built parts (the batch composition, whether the backbone's features can be
cached). Training and restoring a checkpoint both build their module here, so a restored model is the
trained one."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from torch import nn

from .adapt import ADAPTERS
from .adapt.base import Needs, needs_of
from .backbones import BACKBONES
from .config import RunConfig, to_plain_dict, training_sources
from .data.datamodule import DomainDataModule
from .errors import ConfigError
from .feature_cache import CachedBackbone, backbone_digest, featurize_domain, streamed, why_not_cacheable
from .freeze import SCHEDULES
from .heads import build_bottleneck, build_head
from .selection import RULES

log = logging.getLogger(__name__)


def build_augmentation_for(preset: str, datamodule: DomainDataModule):
    if preset == "none":
        return None
    from .data.augment import build_augmentation

    # The same augmentation is applied to source and target batches: flip only if both allow it.
    return build_augmentation(preset, datamodule.source.hflip_ok and datamodule.target.hflip_ok)


def check_method_fits(run: RunConfig, needs: Needs, datamodule: DomainDataModule) -> None:
    """Refuse combinations a method cannot honour: a source-free method has no source split to select on
    and no second domain in an in-domain run."""
    if needs.source:
        return
    if RULES[run.selection].reads_source:
        usable = ", ".join(name for name, rule in RULES.items() if not rule.reads_source and not rule.uses_target_labels)
        raise ConfigError(
            f"selection={run.selection}: adapt={run.adapt.name} is source-free, so there is no source "
            f"validation split; use selection= one of {usable} (or oracle, labelled as such)"
        )
    if datamodule.in_domain:
        raise ConfigError(f"adapt={run.adapt.name} is source-free: it needs a target domain different from the source")


def effective_batch_composition(run: RunConfig, needs: Needs, datamodule: DomainDataModule, target_has_no_effect: bool) -> str:
    """The batch composition a run trains with. A method that ignores the target forwards only the source
    when a target batch could change nothing: in an in-domain run (a second source batch would just
    change batch size), or when nothing that trains normalises or drops out (`target_has_no_effect`);
    and always with several source domains, where the target is the unseen test domain."""
    if run.batch_composition == "source" and needs.target:
        raise ConfigError(f"batch_composition=source: adapt={run.adapt.name} needs target batches; use joint or separate")
    if run.batch_composition == "domain_bn" and needs.evaluation_hook:
        raise ConfigError(f"batch_composition=domain_bn: adapt={run.adapt.name} re-estimates BatchNorm itself; use joint or separate")
    if not needs.target and datamodule.source_domains:
        return "source"  # domain generalisation: the target domain is never seen in training, not even by BatchNorm
    if not needs.target and (datamodule.in_domain or (target_has_no_effect and run.batch_composition in ("joint", "separate"))):
        return "source"
    return run.batch_composition


def batch_dependent(*parts: nn.Module) -> bool:
    """True if any part has BatchNorm or active dropout: layers whose output depends on what else is in
    the batch or that draw random numbers, so forwarding a target batch changes the run."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.Dropout) and m.p > 0) for part in parts for m in part.modules())


@dataclass
class Parts:
    """The networks of one run, before they are wired into a module."""

    backbone: nn.Module
    head: nn.Module
    bottleneck: nn.Module
    adapter: nn.Module
    schedule: object


def source_domain_count(run: RunConfig) -> int:
    """How many source domains the run's labelled data pools (1 without data.sources)."""
    if not run.data.sources:
        return 1
    return len(training_sources(run.data))


def build_parts(run: RunConfig, backbone_cfg, num_classes: int, build_backbone=None) -> Parts:
    """`build_backbone` (default: the registry's) lets a sweep that builds many jobs at once reuse one
    construction (fused_heads.SharedBackbones)."""
    schedule = SCHEDULES.build(run.freeze)
    backbone = (build_backbone or BACKBONES.build)(backbone_cfg)
    feature_dim = run.head.bottleneck or backbone.out_features
    adapter = ADAPTERS.build(run.adapt, num_classes=num_classes, feature_dim=feature_dim, num_domains=source_domain_count(run))
    head = build_head(feature_dim, num_classes, run.head.hidden, run.head.dropout)
    return Parts(backbone, head, build_bottleneck(backbone.out_features, run.head.bottleneck), adapter, schedule)


def wire(module_class: type, run: RunConfig, parts: Parts, needs: Needs, num_classes: int, composition: str, augment=None, strong_augment=None) -> nn.Module:
    """The module (a `module_class`, i.e. TransferModule: its restore path sits below it, so callers name
    the class) of `parts`, carrying its run config for checkpoints."""
    module = module_class(
        parts.backbone,
        parts.head,
        parts.adapter,
        parts.schedule,
        run.optim,
        num_classes,
        augment,
        seed=run.seed,
        bottleneck=parts.bottleneck,
        batch_composition=composition,
        strong_augment=strong_augment,
        needs=needs,
        head_solver=run.head.solver,
    )
    module.run_config = to_plain_dict(run)  # stored in checkpoints: TransferModule.load_from_checkpoint(path) rebuilds it
    return module


def build_module(plan, datamodule: DomainDataModule, module_class: type, build_backbone=None) -> tuple[nn.Module, DomainDataModule, str]:
    """Assemble the module of a RunPlan; with a fully frozen backbone, swap images for cached features.

    Returns the module, the datamodule it trains on, and the feature-cache decision ("on" or why not).
    """
    run, needs = plan.run, plan.needs
    check_method_fits(run, needs, datamodule)
    parts = build_parts(run, plan.backbone, datamodule.num_classes, build_backbone)
    backbone = parts.backbone
    not_fixed = why_not_cacheable(parts.schedule, backbone, needs, run.data.augment, run.trainer.max_epochs)
    backbone_trains = parts.schedule.always_frozen_prefix(len(backbone.stages()), run.trainer.max_epochs) < len(backbone.stages())
    composition = effective_batch_composition(run, needs, datamodule, not_fixed is None and not batch_dependent(parts.bottleneck, parts.head))
    if not run.trainer.feature_cache:
        reason = "trainer.feature_cache=false"
    else:
        several = "several source domains (data.sources) are not cached yet" if datamodule.source_domains else None
        reason = not_fixed or several or streamed((datamodule.source, datamodule.target))
    if run.head.solver == "lbfgs" and reason is not None:
        raise ConfigError(f"head.solver=lbfgs fits a linear probe on cached features, and this run's are not cached: {reason}")
    if reason is None:
        key = backbone_digest(backbone)
        source = featurize_domain(backbone, datamodule.source, key)
        target = source if datamodule.in_domain else featurize_domain(backbone, datamodule.target, key)
        data = run.data
        if run.head.solver == "lbfgs":  # full-batch: the whole training split in one batch
            data = dataclasses.replace(data, batch_size=max(len(split) for domain in (source, target) for split in (domain.train, domain.val, domain.test)))
        datamodule = DomainDataModule(data, run.seed, source, target, run.trainer.steps_per_epoch)
        parts.backbone = CachedBackbone(backbone.out_features, featurized=backbone)
    # said when it matters (on, or off although the backbone never trains); a fine-tuning run needs no line
    (log.debug if backbone_trains and reason is not None else log.info)("feature cache: %s", "on" if reason is None else f"off ({reason})")
    datamodule.serve(needs, composition)
    augment = build_augmentation_for(run.data.augment, datamodule)
    strong = build_augmentation_for("strong", datamodule) if needs.strong_view else None
    module = wire(module_class, run, parts, needs, datamodule.num_classes, composition, augment, strong)
    return module, datamodule, "on" if reason is None else f"off: {reason}"


def build_for_inference(run: RunConfig, num_classes: int, composition: str, module_class: type) -> nn.Module:
    """The module of a recorded run, to receive its checkpoint's weights: no data, no augmentation (they
    only shape training), the backbone as the config names it."""
    return wire(module_class, run, build_parts(run, run.backbone, num_classes), needs_of(run.adapt), num_classes, composition)
