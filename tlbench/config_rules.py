"""The allowed values of every config field, in one table, checked before any run is created.

Types are enforced by the schemas (OmegaConf); this table adds what a type cannot say: ranges, choices
and list contents. A key is `group.field`; for the groups whose schema depends on the chosen
implementation (backbone, freeze, adapt) one key covers every implementation that has the field.
Every float must also be finite. A value outside its rule is one ConfigError line naming the key, the
rule and, for a choice, the closest allowed value; before this table such values passed validation and
failed later inside PyTorch or Lightning with a traceback (lr=nan, precision=17, devices=0, dropout=1.5).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import ConfigError
from .selection import CHECKPOINT_RULES
from .suggestions import closest

#: How source and target images reach the backbone's BatchNorm layers in a training step:
#: joint = one concatenated batch (statistics over both domains), separate = one forward pass per domain
#: (each normalised by its own statistics), domain_bn = separate passes through domain-specific BatchNorm
#: copies (DSBN), source = the target is never forwarded (only for methods that do not use it). A
#: baseline must use the same composition as the method it is compared with.
BATCH_COMPOSITIONS = ("joint", "separate", "domain_bn", "source")
SCHEDULERS = ("constant", "cosine", "dann", "inv")

#: Largest seed: a run reseeds each epoch with seed·10007 + epoch, which must stay below 2**32.
MAX_SEED = 400_000
assert MAX_SEED * 10_007 + 100_000 < 2**32


@dataclass(frozen=True)
class Rule:
    """`test(value)` is true for allowed values; `says` completes "<key>: ..." when it is not."""

    test: Callable[[Any], bool]
    says: str
    #: For lists: the rule applies to each element; `non_empty` also refuses [].
    each: bool = False
    non_empty: bool = False
    choices: tuple = ()


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"must be > {low:g}")


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"must be ≥ {low:g}")


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def test(v: Any) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Rule(test, f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "choose one of: " + ", ".join(map(str, choices)), choices=choices)


def each(rule: Rule, non_empty: bool = False) -> Rule:
    return dataclasses.replace(rule, each=True, non_empty=non_empty, says=f"every element {rule.says}")


def non_empty_text() -> Rule:
    return Rule(lambda v: bool(str(v).strip()), "must not be empty")


#: No constraint beyond the field's type (names, paths, URIs, tags); checked where they are resolved.
FREE = Rule(lambda v: True, "")


def _valid_devices(value: Any) -> bool:
    """Lightning's forms: auto, a count (≥ 1, or -1 = all), "0,1" or [0, 1] (device indices)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return True
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(p.lstrip("-").isdigit() for p in parts):
            return False
        return _valid_devices(int(parts[0])) if len(parts) == 1 else _valid_device_list([int(p) for p in parts])
    if isinstance(value, (list, tuple)):
        return _valid_device_list(list(value))
    return False


def _valid_device_list(indices: list) -> bool:
    return bool(indices) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices) and len(set(indices)) == len(indices)


#: Lightning 2.x names (tests/test_reliability_config.py checks them against the installed Lightning).
PRECISIONS = (
    "32-true",
    "32",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "64-true",
    "64",
    "transformer-engine",
    "transformer-engine-float16",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false",
    "fsdp",
    "deepspeed",
    "single_device",
)


def _rules() -> dict[str, Rule]:
    from .adapt.base import NORMALISATIONS
    from .freeze.base import BN_POLICIES

    fraction_or_count = Rule(lambda v: 0 < v <= 1 or (v > 1 and float(v).is_integer()), "must be a fraction in (0, 1] or a whole number of batches > 1")
    return {
        # top level
        "seed": within(0, MAX_SEED),
        "selection": one_of(*CHECKPOINT_RULES),
        "batch_composition": one_of(*BATCH_COMPOSITIONS),
        "output_dir": non_empty_text(),
        "checkpoint_dir": non_empty_text(),
        "resume": FREE,
        # data
        "data.name": FREE,
        "data.source": non_empty_text(),
        "data.target": non_empty_text(),
        "data.sources": each(non_empty_text(), non_empty=True),
        "data.holdout": non_empty_text(),
        "data.root": FREE,
        "data.batch_size": at_least(1),  # larger than a split is fine: the split is one batch
        "data.labels_per_class": at_least(1),
        "data.label_fraction": within(0, 1, low_open=True),
        "data.val_labels_per_class": at_least(1),
        "data.target_eval": one_of("split", "whole"),
        "data.augment": one_of("none", "standard", "strong"),
        "data.num_workers": within(0, 256),
        "data.synthetic_size": at_least(100),  # below ~70 the 80/10/10 split leaves validation or test empty (a crash)
        "data.image_size": within(8, 4096),
        # head
        "head.hidden": each(at_least(1)),
        "head.dropout": within(0, 1, high_open=True),
        "head.bottleneck": at_least(1),
        "head.solver": one_of("optimizer", "lbfgs"),
        # optim
        "optim.name": one_of("adamw", "sgd"),
        "optim.lr": above(0),
        "optim.weight_decay": at_least(0),
        "optim.momentum": within(0, 1),
        "optim.nesterov": FREE,
        "optim.scheduler": one_of(*SCHEDULERS),
        "optim.inv_gamma": at_least(0),
        "optim.inv_power": at_least(0),
        "optim.backbone_lr_scale": at_least(0),
        "optim.head_lr_scale": at_least(0),
        "optim.adapter_lr_scale": at_least(0),
        # trainer
        "trainer.max_epochs": within(1, 100_000),
        "trainer.steps_per_epoch": at_least(1),
        "trainer.limit_train_batches": fraction_or_count,
        "trainer.limit_val_batches": fraction_or_count,  # 0 would leave the selection metric unlogged
        "trainer.accelerator": one_of(*ACCELERATORS),
        "trainer.devices": Rule(_valid_devices, "must be auto, a count ≥ 1, -1 (all devices), or device indices like [0,1]"),
        "trainer.strategy": one_of(*STRATEGIES),
        "trainer.precision": one_of(*PRECISIONS),
        "trainer.deterministic": FREE,
        "trainer.log_every_n_steps": at_least(1),
        "trainer.fast_dev_run": FREE,
        "trainer.enable_progress_bar": FREE,
        "trainer.gradient_clip_val": above(0),
        "trainer.feature_cache": FREE,
        "trainer.fuse_heads": FREE,
        "trainer.threads": Rule(lambda v: v is None or v >= 1, "must be null (auto) or a number of threads ≥ 1"),
        "trainer.options": FREE,  # checked against pl.Trainer's signature when the Trainer is built (trainer_factory.build_trainer)
        # tracking
        "tracking.uri": FREE,
        "tracking.experiment": non_empty_text(),
        "tracking.run_name": FREE,
        "tracking.tags": FREE,
        "tracking.log_model": FREE,
        "tracking.skip_done": FREE,
        "tracking.plots": FREE,
        "tracking.analysis": FREE,
        "tracking.timeout_s": within(1, 3600),
        # backbone (every implementation)
        "backbone.family": FREE,  # checked by the registry
        "backbone.name": FREE,  # display name only
        "backbone.weights": FREE,  # resolved (and refused in one line) when the backbone is built
        "backbone.model": FREE,  # checked against torchvision/timm by the implementation
        "backbone.input_size": within(16, 1024),
        "backbone.width": within(1, 4096),
        "backbone.coarse": FREE,
        "backbone.max_length": within(8, 4096),  # tokens per text (text encoders)
        "backbone.pooling": one_of("mean", "cls"),
        "backbone.dropout": within(0, 1, high_open=True),
        # freeze (every schedule)
        "freeze.name": FREE,
        "freeze.bn_policy": one_of(*BN_POLICIES),
        "freeze.l2sp_alpha": at_least(0),
        "freeze.decay": within(0, 1, low_open=True),
        "freeze.k": FREE,  # checked against the backbone's stage count when the schedule is applied
        "freeze.every_n_epochs": at_least(1),
        "freeze.unfrozen_lr_scale": above(0),
        "freeze.probe_epochs": at_least(0),
        # adapt (every method)
        "adapt.name": FREE,
        "adapt.trade_off": at_least(0),
        "adapt.hidden": within(1, 65_536),
        "adapt.depth": within(1, 16),
        "adapt.dropout": within(0, 1, high_open=True),
        "adapt.batch_norm": FREE,
        "adapt.gamma": at_least(0),
        "adapt.max_lambda": at_least(0),
        "adapt.ramp_steps": at_least(1),
        "adapt.randomized": FREE,
        "adapt.randomized_dim": within(1, 65_536),
        "adapt.normalisation": one_of(*NORMALISATIONS),
        "adapt.kernel_multipliers": each(above(0), non_empty=True),
        "adapt.kernel": one_of("batch", "fixed"),
        "adapt.unbiased": FREE,
        "adapt.ramp": FREE,
        "adapt.temperature": above(0),
        "adapt.threshold": within(0, 1),
        "adapt.source_model": FREE,  # a runs:/ URI or a method name, resolved when the run starts (source_model.py)
        "adapt.pseudo_label_weight": at_least(0),
        "adapt.diversity": FREE,
        "adapt.rounds": within(0, 100),
        "adapt.anneal_steps": at_least(0),
        "adapt.eta": above(0),
        "adapt.alpha": above(0),  # Mixup's Beta(α, α)
        "adapt.inner_lr": above(0),  # MLDG's virtual step
        "adapt.epsilon": above(0),
    }


_RULES: dict[str, Rule] | None = None


def rules() -> dict[str, Rule]:
    global _RULES
    if _RULES is None:
        _RULES = _rules()
    return _RULES


def leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every field of a typed config, one level into each group."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not prefix:
            yield from leaves(value, f"{key}.")
        else:
            yield key, value


def check_values(run: Any) -> None:
    """Raise one ConfigError line for the first field whose value its rule refuses."""
    table = rules()
    for key, value in leaves(run):
        if value is None:  # Optional fields: the schema already allows None
            continue
        items = value if isinstance(value, (list, tuple)) and key != "trainer.devices" else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key}: must be a finite number, got {item}")
        rule = table.get(key)
        if rule is None or rule is FREE:
            continue
        if rule.each:
            if rule.non_empty and not value:
                raise ConfigError(f"{key}: must not be empty")
            bad = [v for v in value if not rule.test(v)]
            if bad:
                raise ConfigError(f"{key}: {rule.says}, got {value}")
        elif not rule.test(value):
            if rule.choices:
                raise ConfigError(f"{key}: {value!r} is not allowed{closest(value, rule.choices)}; {rule.says}")
            raise ConfigError(f"{key}: {rule.says}, got {value!r}")
