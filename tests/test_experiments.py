"""Every experiment spec is runnable as written: each sweep value composes and validates, references
parse, and the runner names the missing data instead of starting when a dataset is absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tlbench.config import validate

from conftest import compose

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*/spec.yaml"))


def _variants(sweep: list[str]) -> list[list[str]]:
    """The first grid point, plus one variant per extra value of every swept key."""
    parsed = OverridesParser.create().parse_overrides(sweep)
    options = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    first = [choices[0] for choices in options]
    variants = [first]
    for index, choices in enumerate(options):
        for choice in choices[1:]:
            variants.append(first[:index] + [choice] + first[index + 1 :])
    return variants


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.parent.name)
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


def test_runner_lists_missing_data_and_does_not_start(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "run.py"), "tllib_digits"],
        capture_output=True, text=True, timeout=120, env={"TLBENCH_DATA": str(tmp_path), "TLBENCH_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 2
    assert "mnist" in result.stdout and "usps" in result.stdout and "svhn" in result.stdout
    assert not (tmp_path / "mlruns").exists()
