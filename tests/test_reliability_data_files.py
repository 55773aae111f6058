"""Data files cannot run code: CIFAR python batches are read with a restricted unpickler, so a crafted
batch file is refused with one DataError line and whatever it asked to call never runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlbench.config import DataConfig
from tlbench.data import build_domain
from tlbench.data.safe_pickle import load_data_pickle
from tlbench.errors import DataError

CLASSES = [f"class{i}" for i in range(10)]


class RunsCode:
    """Unpickling this calls os.system: what a poisoned batches.meta would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def dump_like_cifar(value, path: Path) -> None:
    """Protocol 2 with numpy 1.x module names, as the official CIFAR files are written."""
    path.write_bytes(pickle.dumps(value, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar10(root: Path, per_batch: int = 20, meta=None) -> Path:
    base = root / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "batch_label": name,
            "labels": [i % 10 for i in range(per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{i}.png" for i in range(per_batch)],
        }
        dump_like_cifar(batch, base / name)
    dump_like_cifar(meta if meta is not None else {"label_names": CLASSES, "num_vis": 3072}, base / "batches.meta")
    return base


def test_genuine_cifar_batches_still_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    write_cifar10(tmp_path)
    domain = build_domain("cifar10", DataConfig(root=str(tmp_path)), 0)
    assert domain.class_names == CLASSES
    assert domain.test.images.shape == (20, 3, 32, 32)
    assert len(domain.train) + len(domain.val) == 100


def test_crafted_batch_file_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    marker = tmp_path / "code_ran"
    base = write_cifar10(tmp_path, meta={"label_names": CLASSES, "payload": RunsCode(marker)})
    with pytest.raises(DataError) as info:
        build_domain("cifar10", DataConfig(root=str(tmp_path)), 0)
    message = str(info.value)
    assert "\n" not in message
    assert str(base / "batches.meta") in message and "posix.system" in message
    assert not marker.exists()


def test_object_arrays_and_other_callables_are_refused(tmp_path):
    objects = tmp_path / "objects"
    objects.write_bytes(pickle.dumps({"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match="array of Python objects"):
        load_data_pickle(objects, "CIFAR python batch")
    builtin_call = tmp_path / "eval"
    builtin_call.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # eval('1+1') in pickle opcodes
    with pytest.raises(DataError, match="builtins.eval"):
        load_data_pickle(builtin_call, "CIFAR python batch")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(pickle.dumps({"data": np.zeros(100, np.uint8)}, protocol=2)[:50])
    with pytest.raises(DataError, match="not a readable CIFAR python batch"):
        load_data_pickle(truncated, "CIFAR python batch")


@pytest.mark.slow  # starts a process
def test_training_on_a_crafted_folder_is_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    write_cifar10(tmp_path, meta={"label_names": CLASSES, "payload": RunsCode(marker)})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlbench",
            "backbone=small_cnn",
            "data.source=cifar10",
            "data.target=cifar10",
            f"data.root={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "TLBENCH_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("tlbench: error:") and "refused to load" in result.stderr
    assert not marker.exists()
