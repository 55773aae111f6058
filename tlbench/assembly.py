"""Assemble what a run trains: backbone (with its freezing schedule's weights), head, bottleneck and the
method's layers in a TransferModule, the datamodule shaped to what the method reads, and the feature-cache
decision (a backbone frozen for the whole run is replaced by its cached features). Training, recording
and restoring a checkpoint all build their module here, so a restored model is the trained one."""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from .adapt import ADAPTERS
from .backbones import BACKBONES
from .config import RunConfig, to_plain_dict
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


def check_method_fits(run: RunConfig, adapter, datamodule: DomainDataModule) -> None:
    """Refuse combinations a method cannot honour: a source-free method has no source split to select on
    and no second domain in an in-domain run."""
    if adapter.needs.source:
        return
    if RULES[run.selection].reads_source:
        usable = ", ".join(name for name, rule in RULES.items() if not rule.reads_source and not rule.uses_target_labels)
        raise ConfigError(
            f"selection={run.selection}: adapt={run.adapt.name} is source-free, so there is no source "
            f"validation split; use selection= one of {usable} (or oracle, labelled as such)"
        )
    if datamodule.in_domain:
        raise ConfigError(f"adapt={run.adapt.name} is source-free: it needs a target domain different from the source")


def effective_batch_composition(run: RunConfig, adapter, datamodule: DomainDataModule, target_has_no_effect: bool) -> str:
    """The batch composition a run trains with. A method that ignores the target forwards only the source
    when a target batch could change nothing: in an in-domain run (a second source batch would just
    change batch size), or when nothing that trains normalises or drops out (`target_has_no_effect`)."""
    if run.batch_composition == "source" and adapter.needs.target:
        raise ConfigError(f"batch_composition=source: adapt={run.adapt.name} needs target batches; use joint or separate")
    if run.batch_composition == "domain_bn" and adapter.changes_backbone_before_evaluation:
        raise ConfigError(f"batch_composition=domain_bn: adapt={run.adapt.name} re-estimates BatchNorm itself; use joint or separate")
    if not adapter.needs.target and (datamodule.in_domain or (target_has_no_effect and run.batch_composition in ("joint", "separate"))):
        return "source"
    return run.batch_composition


def batch_dependent(*parts: nn.Module) -> bool:
    """True if any part has BatchNorm or active dropout: layers whose output depends on what else is in
    the batch or that draw random numbers, so forwarding a target batch changes the run."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.Dropout) and m.p > 0) for part in parts for m in part.modules())


def build_module(run: RunConfig, datamodule: DomainDataModule, module_class: type) -> tuple[nn.Module, DomainDataModule, str]:
    """Assemble the module (a `module_class`, i.e. TransferModule: its restore path sits below it, so the
    caller names the class); with a fully frozen backbone, swap images for cached features.

    Returns the module, the datamodule it trains on, and the feature-cache decision ("on" or why not).
    """
    schedule = SCHEDULES.build(run.freeze)
    backbone_cfg = run.backbone if schedule.uses_pretrained else dataclasses.replace(run.backbone, weights="none")
    backbone = BACKBONES.build(backbone_cfg)
    feature_dim = run.head.bottleneck or backbone.out_features
    adapter = ADAPTERS.build(run.adapt, num_classes=datamodule.num_classes, feature_dim=feature_dim)
    check_method_fits(run, adapter, datamodule)
    head = build_head(feature_dim, datamodule.num_classes, run.head.hidden, run.head.dropout)
    bottleneck = build_bottleneck(backbone.out_features, run.head.bottleneck)
    not_fixed = why_not_cacheable(schedule, backbone, adapter, run.data.augment, run.trainer.max_epochs)
    backbone_trains = schedule.always_frozen_prefix(len(backbone.stages()), run.trainer.max_epochs) < len(backbone.stages())
    composition = effective_batch_composition(run, adapter, datamodule, not_fixed is None and not batch_dependent(bottleneck, head))
    if not run.trainer.feature_cache:
        reason = "trainer.feature_cache=false"
    else:
        reason = not_fixed or streamed((datamodule.source, datamodule.target))
    if reason is None:
        key = backbone_digest(backbone)
        source = featurize_domain(backbone, datamodule.source, key)
        target = source if datamodule.in_domain else featurize_domain(backbone, datamodule.target, key)
        datamodule = DomainDataModule(run.data, run.seed, source, target, run.trainer.steps_per_epoch)
        backbone = CachedBackbone(backbone.out_features)
    # said when it matters (on, or off although the backbone never trains); a fine-tuning run needs no line
    (log.debug if backbone_trains and reason is not None else log.info)("feature cache: %s", "on" if reason is None else f"off ({reason})")
    datamodule.serve(adapter, composition)
    module = module_class(
        backbone,
        head,
        adapter,
        schedule,
        run.optim,
        datamodule.num_classes,
        build_augmentation_for(run.data.augment, datamodule),
        seed=run.seed,
        bottleneck=bottleneck,
        batch_composition=composition,
        strong_augment=build_augmentation_for("strong", datamodule) if adapter.needs.strong_view else None,
    )
    module.run_config = to_plain_dict(run)  # stored in checkpoints: TransferModule.load_from_checkpoint(path) rebuilds it
    return module, datamodule, "on" if reason is None else f"off: {reason}"
