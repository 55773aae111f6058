"""`tlbench --help` and the subcommands' help answer at once: no deep-learning library is imported
before a run starts (Lightning and torch alone took 7-11 s to import here). The time itself is measured
by the perf benchmark (experiments/perf), not asserted here: a wall-clock limit fails under load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TLBENCH = Path(sys.executable).parent / "tlbench"
HEAVY = ("torch", "pytorch_lightning", "mlflow", "optuna", "timm")


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["search", "--help"], ["eval", "--help"], ["compare", "--help"]])
def test_help_imports_no_heavy_library(args):
    probe = (
        "import sys\n"
        f"sys.argv = ['tlbench', *{args!r}]\n"
        "from tlbench.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "IMPORTED []" in result.stdout, result.stdout[-300:] + result.stderr[-1000:]


@pytest.mark.slow  # starts a process
def test_import_tlbench_is_light():
    """`import tlbench` (the Python API's entry) loads its heavy parts on first use only."""
    probe = f"import sys, tlbench; print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "IMPORTED []" in result.stdout, result.stderr[-1000:]


@pytest.mark.slow  # starts a process
def test_help_names_every_subcommand_and_each_answers_its_help():
    from tlbench.cli import SUBCOMMANDS

    top = subprocess.run([str(TLBENCH), "--help"], capture_output=True, text=True, timeout=60).stdout
    groups = dict(line.split(": ", 1) for line in top.split("== Configuration groups ==")[1].split("== Config ==")[0].splitlines() if ": " in line)
    assert {"data", "trainer", "tracking", "adapt"} <= set(groups) and "digits" in groups["data"].split(", ")
    assert not [g for g, options in groups.items() if "schema" in options.split(", ")]  # typed defaults, not a user's option
    for name in SUBCOMMANDS:
        assert f"tlbench {name}" in top, name
        sub = subprocess.run([str(TLBENCH), name, "--help"], capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0 and f"tlbench {name}" in sub.stdout, (name, sub.stderr[-500:])
