"""Every experiment spec is runnable as written: each sweep value composes and validates, references
parse, and the runner names the missing data instead of starting when a dataset is absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONF_DIR, compose
from hydra.core.override_parser.overrides_parser import OverridesParser

from tlbench.config import validate

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*/spec.yaml"))


def with_preset_params(sweep: list[str]) -> list[str]:
    """The sweep as Hydra's basic sweeper runs it: a preset's `hydra.sweeper.params`, then the command
    line's overrides (which win for the same key)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    plain = [o for o in sweep if "," not in o]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = hydra_compose(config_name="config", overrides=plain, return_hydra_config=True)
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.params or {}).items()}
    given = {o.split("=", 1)[0]: o for o in sweep}
    return [*sweep, *(f"{key}={value}" for key, value in params.items() if key not in given)]


def grid_size(sweep: list[str]) -> int:
    size = 1
    for override in OverridesParser.create().parse_overrides(with_preset_params(sweep)):
        if override.is_sweep_override():
            size *= len(list(override.sweep_string_iterator()))
    return size


def _variants(sweep: list[str]) -> list[list[str]]:
    """The first grid point, plus one variant per extra value of every swept key (preset params included)."""
    parsed = OverridesParser.create().parse_overrides(with_preset_params(sweep))
    options = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line] for o in parsed]
    first = [choices[0] for choices in options]
    variants = [first]
    for index, choices in enumerate(options):
        for choice in choices[1:]:
            variants.append(first[:index] + [choice] + first[index + 1 :])
    return variants


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.parent.name)
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_spec_sweeps_compose_and_validate(spec_path):
    spec = yaml.safe_load(spec_path.read_text())
    assert spec["title"] and spec["protocol"] and spec["sweeps"]
    for sweep in spec["sweeps"]:
        for overrides in _variants(sweep):
            validate(compose(overrides))
    for report in spec.get("reports", []):
        if "reference" in report:
            reference = yaml.safe_load((spec_path.parent / report["reference"]).read_text())
            assert reference["values"], spec_path


@pytest.mark.parametrize(
    "sweep, runs",
    [
        (["experiment=da_digits"], 18),
        (["experiment=da_digits", "adapt=source_only", "batch_composition=separate"], 3),
        (["experiment=da_fashion"], 18),
        (["experiment=da_fashion", "seed=2"], 6),
        (["experiment=transfer_vs_scratch"], 27),
        (["experiment=transfer_vs_scratch", "freeze=linear_probe", "optim.lr=0.01"], 9),
        (["experiment=quickstart"], 4),
    ],
)
def test_reproductions_are_hydra_presets_whose_grid_the_sweeper_expands(sweep, runs):
    """`tlbench -m experiment=<reproduction>` runs the whole grid from the preset's hydra.sweeper.params;
    a command-line override of a swept key replaces its values."""
    assert grid_size(sweep) == runs


def test_spec_sweeps_name_their_preset_instead_of_restating_it():
    for name in ("da_digits", "da_fashion", "transfer_vs_scratch"):
        spec = yaml.safe_load((EXPERIMENTS / name / "spec.yaml").read_text())
        assert all(sweep[0] == f"experiment={name}" and len(sweep) <= 3 for sweep in spec["sweeps"]), name


@pytest.mark.slow  # starts a process
def test_runner_lists_missing_data_and_does_not_start(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "run.py"), "tllib_digits"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TLBENCH_DATA": str(tmp_path), "TLBENCH_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 2
    assert "mnist" in result.stdout and "usps" in result.stdout and "svhn" in result.stdout
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("name", ["dann_digits", "tllib_digits", "office31"])
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_real_data_specs_compose_their_preset_and_every_run_has_the_recorded_recipe(name):
    """Each real-data reproduction names its recipe preset (not a stale restatement) and every run of every
    sweep composes to the recipe values written in the spec."""
    from tlbench.config import flatten, to_plain_dict

    spec = yaml.safe_load((EXPERIMENTS / name / "spec.yaml").read_text())
    assert spec["recipe"]
    for sweep in spec["sweeps"]:
        assert sweep[0].startswith("experiment="), sweep
        for overrides in _variants(sweep):
            flat = flatten(to_plain_dict(validate(compose(overrides))))
            wrong = {key: (flat.get(key), value) for key, value in spec["recipe"].items() if flat.get(key) != value}
            assert not wrong, f"{name} {overrides}: (composed, recipe) {wrong}"
