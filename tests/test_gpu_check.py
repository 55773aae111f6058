"""The GPU check script stays runnable: its CPU dry run passes every check here, and without a GPU and
without --dry-run it says so in one line instead of failing half-way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "perf" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_dry_run_passes_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "report.md")], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert len(rows) == 6 and all("| ok |" in row for row in rows), report
    assert "DDP on 2 device(s) records one run" in report and "images/s" in report


@pytest.mark.slow  # starts a process
def test_the_gpu_check_without_a_gpu_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--dry-run" in result.stderr
