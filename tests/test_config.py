"""Every yaml in conf/ composes and validates; bad keys, types and options fail with one clear line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from helpers import CONF_DIR, compose, group_options
from omegaconf import OmegaConf

from tlbench.config import GROUP_SCHEMAS, DataConfig, flatten, to_plain_dict, validate
from tlbench.errors import ConfigError, one_line

# A quick, offline data/backbone pair so that validation tests never touch large data.
FAST = ["backbone=small_cnn", "data=digits"]


@pytest.mark.parametrize("group", ["backbone", "freeze", "data", "adapt", "trainer", "tracking", "experiment"])
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_every_group_option_composes_and_validates(group):
    options = group_options(group)
    assert options, f"conf/{group} has no yaml"
    for option in options:
        overrides = [f"{group}={option}"] + [o for o in FAST if not o.startswith(group + "=")]
        run = validate(compose(overrides))  # raises on any key, type or value the yaml gets wrong
        if group in ("data", "freeze"):
            assert getattr(run, group).name == option
        elif group == "adapt":  # a method, or a recipe variant <method>_<recipe>
            assert option == run.adapt.name or option.startswith(run.adapt.name + "_")


def test_default_config_is_the_embedded_task():
    run = validate(compose())
    assert run.backbone.name == "efficientnet_lite0" and run.backbone.weights == "imagenet"
    assert run.data.source == "synthetic_digits" and run.data.target == "sklearn_digits"
    assert run.selection == "source_val"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("+adapt.trade_of=1.0", "adapt.trade_of"),
        ("adapt=dann adapt.trade_off=abc", "adapt.trade_off"),
        ("+data.batchsize=3", "data.batchsize"),
        ("data.batch_size=many", "data.batch_size"),
        ("selection=test_labels", "selection"),
        ("optim.name=adam", "optim.name"),
        ("+learning_rate=0.1", "learning_rate"),
        ("optim.lr=-1", "optim.lr"),
        ("seed=abc", "seed"),
        ("data.labels_per_class=5 data.label_fraction=0.5", "at most one"),
        ("backbone.family=resnet9000", "backbone.family"),
        ("+adapt._target_=os.system", "adapt._target_"),
        ("+backbone._target_=builtins.eval", "backbone._target_"),
    ],
)
def test_bad_config_raises_one_line_error(override, fragment):
    with pytest.raises(ConfigError) as info:
        validate(compose(FAST + override.split()))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_flatten_gives_dotted_params():
    run = validate(compose(FAST))
    flat = flatten(to_plain_dict(run))
    assert flat["data.source"] == "synthetic_digits"
    assert flat["backbone.name"] == "small_cnn"
    assert "optim.lr" in flat and not any(isinstance(v, dict) and v for v in flat.values())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlbench", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # starts a process
def test_cli_unknown_option_lists_choices_and_fails():
    result = _cli("adapt=nope")
    assert result.returncode != 0
    assert "Available options in 'adapt'" in result.stderr and "dann" in result.stderr


@pytest.mark.slow  # starts a process
def test_cli_bad_type_is_one_line_and_nonzero(tmp_path):
    result = _cli("backbone=small_cnn", "data.batch_size=many", f"tracking.uri=sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlbench: error:")]
    assert len(errors) == 1 and "data.batch_size" in errors[0]
    assert "Traceback" not in result.stderr


def test_config_yaml_round_trips():
    run = validate(compose(FAST + ["adapt=dann"]))
    again = validate(OmegaConf.create(to_plain_dict(run)))
    assert again == run


@pytest.mark.parametrize("group", ["backbone", "freeze", "adapt"])
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_every_group_option_instantiates(group):
    """Each yaml builds its object (ImageNet weights only for the bundled backbone: no network here)."""
    from tlbench.adapt import ADAPTERS
    from tlbench.backbones import BACKBONES, Backbone
    from tlbench.freeze import SCHEDULES, FreezeSchedule

    for option in group_options(group):
        overrides = [f"{group}={option}"] + [o for o in FAST if not o.startswith(group + "=")]
        if group == "backbone" and option != "efficientnet_lite0":
            overrides += ["backbone.weights=none"]
        required = {"source_model": "runs:/given"} if option == "shot" else {}  # SHOT's yaml leaves it to the user
        overrides += [f"{group}.{k}={v}" for k, v in required.items()]
        run = validate(compose(overrides))
        if group == "backbone":
            built = BACKBONES.build(run.backbone)
            assert isinstance(built, Backbone) and built.out_features > 0 and built.stages()
        elif group == "freeze":
            assert isinstance(SCHEDULES.build(run.freeze), FreezeSchedule)
        else:  # each adapt yaml also trains a step in test_adapt_methods
            from tlbench.adapt.base import Adapter

            assert isinstance(ADAPTERS.build(run.adapt, num_classes=10, feature_dim=32), Adapter)
            written = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
            typed = dataclasses.asdict(run.adapt)
            written = {k: v for k, v in written.items() if k != "defaults" and k not in required}
            assert {k: typed[k] for k in written} == written, option  # what the yaml says is what the method gets


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMAS))
def test_group_yaml_extends_its_dataclass_and_lists_only_differences(group):
    """Defaults live in one place: a yaml option of a typed group lists only values that differ."""
    schema = GROUP_SCHEMAS[group]
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(schema)}
    paths = sorted((CONF_DIR / group).glob("*.yaml"))
    assert paths
    for path in paths:
        node = yaml.safe_load(path.read_text()) or {}
        parents = node.pop("defaults", [])
        assert "schema" in parents or any(isinstance(p, str) and p != "_self_" for p in parents), path
        repeated = [k for k, v in node.items() if k != "name" and k in defaults and defaults[k] == v]
        assert not repeated, f"{path} repeats defaults of {schema.__name__}: {repeated}"


def test_schema_types_overrides_at_compose_time():
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs: .*Integer"):
        compose(["trainer.max_epochs=five"])
    run = validate(compose(["data=handwritten"]))
    assert (run.data.batch_size, run.data.synthetic_size, run.data.source) == (32, DataConfig().synthetic_size, "sklearn_digits")


@pytest.mark.parametrize(
    "exc, kwargs, expected",
    [
        (ValueError("bad value\nsecond line"), {}, "bad value"),
        (ValueError(""), {}, "ValueError"),  # no message: the type, not an IndexError
        (ValueError("  \n"), {"with_type": True}, "ValueError"),
        (KeyError("k"), {"with_type": True}, "KeyError: 'k'"),
        (RuntimeError("x" * 300), {"limit": 10}, "x" * 10),
    ],
)
def test_one_line_is_the_first_line_or_the_type(exc, kwargs, expected):
    assert one_line(exc, **kwargs) == expected


def test_trainer_options_pass_through_to_lightning_and_bad_keys_are_one_line(tmp_path):
    from tlbench.plan import trainer_arguments

    run = validate(compose(["trainer.limit_train_batches=3", "+trainer.options.accumulate_grad_batches=4"]))
    args = trainer_arguments(run.trainer)
    assert args["accumulate_grad_batches"] == 4 and args["limit_train_batches"] == 3 and isinstance(args["limit_train_batches"], int)
    assert "steps_per_epoch" not in args and "options" not in args
    import pytorch_lightning as pl

    assert pl.Trainer(**args, logger=False).accumulate_grad_batches == 4
    with pytest.raises(ConfigError, match=r"trainer.options.acumulate_grad_batches: not a pytorch_lightning.Trainer argument.*accumulate_grad_batches"):
        trainer_arguments(validate(compose(["+trainer.options.acumulate_grad_batches=4"])).trainer)
    with pytest.raises(ConfigError, match="trainer.options.logger: tlbench sets it"):
        trainer_arguments(validate(compose(["+trainer.options.logger=false"])).trainer)


def test_fields_added_later_leave_config_hashes_unchanged_at_their_neutral_value():
    from tlbench.tracking import config_hash

    run = validate(compose([]))
    for changed in (
        ["+trainer.options.benchmark=true"],
        ["data.val_labels_per_class=5"],
        ["data.target_eval=whole"],
        ["data.sources=[a,b]"],
        ["data.sources=[a,b,c]", "data.target=c", "data.holdout=a"],
    ):
        assert config_hash(run) != config_hash(validate(compose(changed))), changed
    probe = ["freeze=linear_probe"]
    assert config_hash(validate(compose(probe))) != config_hash(validate(compose([*probe, "head.solver=lbfgs"])))
    assert config_hash(validate(compose(probe))) == config_hash(validate(compose([*probe, "trainer.fuse_heads=false"])))  # computes the same
    plain = dataclasses.asdict(run)
    plain["trainer"].pop("options")  # what a run recorded before the fields existed
    plain["data"].pop("val_labels_per_class")
    plain["data"].pop("target_eval")
    plain["data"].pop("sources")
    plain["data"].pop("holdout")
    plain["head"].pop("solver")
    import hashlib
    import json

    from tlbench.config import flatten
    from tlbench.tracking import NON_SEMANTIC_KEYS

    semantic = {k: v for k, v in flatten(plain).items() if not any(k == p or k.startswith(p + ".") for p in NON_SEMANTIC_KEYS)}
    assert config_hash(run) == hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_dg_mmd_kernel_is_checked_and_neutral_at_its_default():
    """`adapt.kernel` came after the committed dg_mmd runs: at `batch` their hashes stay; `fixed` is
    another configuration; anything else is one line."""
    from tlbench.tracking import NEUTRAL_DEFAULTS, config_hash

    mmd = ["adapt=dg_mmd", "data.sources=[a,b]"]
    run = validate(compose(mmd))
    assert run.adapt.kernel == NEUTRAL_DEFAULTS["adapt.kernel"] == "batch"
    assert config_hash(run) != config_hash(validate(compose([*mmd, "adapt.kernel=fixed"])))
    with pytest.raises(ConfigError, match="adapt.kernel: 'gauss' is not allowed; choose one of: batch, fixed"):
        validate(compose([*mmd, "adapt.kernel=gauss"]))
