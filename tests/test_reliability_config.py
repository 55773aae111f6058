"""Bad values, misspelled keys, unknown options and an unusable MLflow store end in one line before any
run is created, instead of a traceback from PyTorch, Lightning, Hydra or SQLite later on."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
import typing

import pytest
from helpers import compose

from tlbench.config import DataConfig, HeadConfig, OptimConfig, RunConfig, TrackingConfig, TrainerConfig, validate
from tlbench.config_rules import ACCELERATORS, PRECISIONS, STRATEGIES, rules
from tlbench.errors import ConfigError
from tlbench.tracking import TrackingError, check_sqlite_store

FAST = ["backbone=small_cnn", "data=digits"]


def _all_schema_keys() -> set[str]:
    from tlbench.adapt import ADAPTERS
    from tlbench.backbones import BACKBONES
    from tlbench.freeze import SCHEDULES

    keys = {f.name for f in dataclasses.fields(RunConfig) if f.name not in ("backbone", "freeze", "adapt", "data", "head", "optim", "trainer", "tracking")}
    for group, schema in (("data", DataConfig), ("head", HeadConfig), ("optim", OptimConfig), ("trainer", TrainerConfig), ("tracking", TrackingConfig)):
        keys |= {f"{group}.{f.name}" for f in dataclasses.fields(schema)}
    for group, registry in (("backbone", BACKBONES), ("freeze", SCHEDULES), ("adapt", ADAPTERS)):
        for name in registry.choices():
            keys |= {f"{group}.{f.name}" for f in dataclasses.fields(registry.entry(name).schema)}
    return keys


def test_every_field_of_every_schema_has_a_rule():
    """A field added without a rule would pass any value again: the table must name every field."""
    missing = sorted(_all_schema_keys() - set(rules()))
    assert not missing, f"config_rules has no rule for: {missing}"


def test_lightning_names_in_the_table_are_the_installed_lightnings():
    import lightning_fabric.connector as connector
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    assert set(typing.get_args(connector._PRECISION_INPUT_STR)) <= set(PRECISIONS)
    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    assert set(AcceleratorRegistry.available_accelerators()) <= set(ACCELERATORS)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lr=nan", "optim.lr: must be a finite number"),
        ("optim.lr=inf", "optim.lr: must be a finite number"),
        ("optim.weight_decay=-1", "optim.weight_decay: must be ≥ 0"),
        ("optim.momentum=2", "optim.momentum: must be in [0, 1]"),
        ("trainer.precision=17", "closest: 16"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=abc", "trainer.devices"),
        ("trainer.strategy=dpp", "closest: ddp"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches"),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches"),
        ("head.dropout=1", "head.dropout: must be in [0, 1)"),
        ("head.hidden=[0]", "head.hidden"),
        ("adapt=dann adapt.dropout=1.5", "adapt.dropout"),
        ("adapt=dann adapt.trade_off=nan", "adapt.trade_off"),
        ("adapt=dan adapt.kernel_multipliers=[]", "adapt.kernel_multipliers: must not be empty"),
        ("adapt=mcc adapt.temperature=0", "adapt.temperature"),
        ("data.synthetic_size=5", "data.synthetic_size"),
        ("seed=-1", "seed"),
        ("seed=500000", "seed"),
        ("tracking.timeout_s=0", "tracking.timeout_s"),
        ("+trainer.max_epoch=1", "closest: max_epochs"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        validate(compose(FAST + override.split()))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.devices=2",
        "trainer.devices=-1",
        "trainer.devices='0,1'",
        "trainer.devices=[0,1]",
        "trainer.limit_train_batches=3",
        "head.dropout=0.5",
        "trainer.precision=bf16-mixed",
        "seed=400000",
    ],
)
def test_allowed_edge_values_pass(override):
    import yaml

    from tlbench.config import flatten, to_plain_dict

    key, value = override.split("=", 1)
    expected = yaml.safe_load(value)  # the value as Hydra's override grammar reads it
    assert flatten(to_plain_dict(validate(compose(FAST + [override]))))[key] == expected


def _cli(cwd, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlbench", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **env})


@pytest.mark.parametrize(
    "args, expected",
    [
        (["trainer.max_epoch=1"], "trainer.max_epoch: no such key in trainer; closest: max_epochs"),
        (["-m", "trainer.max_epoch=1,2"], "closest: max_epochs"),
        (["adapt=dan_"], "adapt=dan_: no such option; closest: dan"),
        (["adapt.trade_of=1"], "adapt.trade_of: no such key in adapt 'source_only'"),
        (["optim.lr=nan"], "optim.lr: must be a finite number"),
    ],
)
@pytest.mark.slow  # starts a process
def test_cli_hydra_and_value_errors_are_one_line(tmp_path, args, expected):
    """Hydra's own text spans several lines and suggests `+trainer.max_epoch`, which adds a key that
    validation then refuses; ours names the closest existing key."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's argparse wants -m before the overrides
    result = _cli(tmp_path, *flags, *FAST, f"tracking.uri=sqlite:///{tmp_path}/m.db", *[a for a in args if a not in flags])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "+trainer.max_epoch" not in result.stderr
    assert not (tmp_path / "m.db").exists()  # failed before any run (or store) was created


@pytest.mark.slow  # starts a process
def test_hydra_full_error_still_gives_hydras_full_output(tmp_path):
    result = _cli(tmp_path, *FAST, "trainer.max_epoch=1", HYDRA_FULL_ERROR="1")
    assert result.returncode != 0 and "Traceback" in result.stderr


# ----------------------------------------------------------------------------- the MLflow store itself
def test_damaged_store_is_one_line(tmp_path):
    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(os.urandom(50_000))
    with pytest.raises(TrackingError, match="not an SQLite database"):
        check_sqlite_store(f"sqlite:///{garbage}", 2)


def test_truncated_store_is_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    connection = sqlite3.connect(db)
    connection.execute("create table t (x text)")
    connection.executemany("insert into t values (?)", [("x" * 500,)] * 2000)
    connection.commit()
    connection.close()
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 3)
    with pytest.raises(TrackingError, match="damaged"):
        check_sqlite_store(f"sqlite:///{db}", 2)


HOLD_LOCK = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def lock_held(db, seconds: float):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_store_locked_by_another_process_waits_then_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    with lock_held(db, 30):
        started = time.monotonic()
        with pytest.raises(TrackingError, match="stayed locked by another process"):
            check_sqlite_store(f"sqlite:///{db}", 1.5)
        assert 1.4 < time.monotonic() - started < 10


@pytest.mark.slow  # starts a process
def test_store_lock_released_within_the_wait_is_taken(tmp_path):
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    with lock_held(db, 1):
        started = time.monotonic()
        check_sqlite_store(f"sqlite:///{db}", 15)  # waits for the holder to let go, then passes
        waited = time.monotonic() - started
    assert 0.5 < waited < 15, f"waited {waited:.1f}s for a lock held 1 s"
    assert sqlite3.connect(db).execute("select count(*) from t").fetchone() == (0,)  # the store is readable after


@contextlib.contextmanager
def read_only_folder(tmp_path):
    """A folder nothing can be written to: a read-only tmpfs as root (root ignores permissions),
    else chmod 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@pytest.mark.slow  # starts a process
def test_read_only_working_directory_is_one_line(tmp_path):
    with read_only_folder(tmp_path) as folder:
        result = _cli(folder, *FAST)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "outputs" in lines[0] and "writable" in lines[0], result.stderr


def test_store_in_a_read_only_folder_is_one_line(tmp_path):
    with read_only_folder(tmp_path) as folder:
        with pytest.raises(TrackingError, match="not writable"):
            check_sqlite_store(f"sqlite:///{folder}/mlflow.db", 2)


@pytest.mark.slow  # starts a process
def test_disk_full_during_a_checkpoint_write_is_one_line_and_the_run_failed(tmp_path):
    """torch.save on a full disk raises RuntimeError('unexpected pos'), not ENOSPC: the CLI names the
    full disk instead of printing ~90 lines of traceback; no partial checkpoint is left."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        result = _cli(
            tmp_path,
            *FAST,
            "data.synthetic_size=300",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.enable_progress_bar=false",
            f"checkpoint_dir={small}",
            f"tracking.uri=sqlite:///{tmp_path}/m.db",
        )
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("tlbench: error:")]
        assert len(errors) == 1 and "is full" in errors[0] and "Traceback" not in result.stderr, result.stderr
        assert not [p for p in small.rglob("*") if p.is_file()]
        statuses = sqlite3.connect(tmp_path / "m.db").execute("select status from runs").fetchall()
        assert statuses == [("FAILED",)]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_bad_places_and_values_are_one_line_naming_the_setting(tmp_path, monkeypatch, capsys):
    """TLBENCH_CACHE that is a file, report --timeout nan/inf, an image folder with one class."""
    from tlbench.errors import DataError
    from tlbench.paths import cache_dir
    from tlbench.report.cli import main as report_main

    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("TLBENCH_CACHE", str(blocker))
    with pytest.raises(DataError, match="TLBENCH_CACHE"):
        cache_dir("features")
    monkeypatch.delenv("TLBENCH_CACHE")
    for value in ("nan", "inf", "-1"):
        assert report_main(["--uri", f"sqlite:///{tmp_path}/m.db", "--timeout", value]) == 2
        assert "--timeout: must be a positive number of seconds" in capsys.readouterr().err

    from tlbench.data.image_folder import scan_folder

    (tmp_path / "one" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="one class folder \\(cats\\).*at least two"):
        scan_folder(tmp_path / "one", "data=folder")


def test_a_sqlite_store_whose_folder_cannot_be_made_is_one_line(tmp_path):
    from tlbench.tracking import TrackingError, client_for

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="its folder .*a_file/sub cannot be made.*set tracking.uri"):
        client_for(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_an_experiment_name_mlflow_refuses_says_why_in_one_line(tmp_path):
    from tlbench.tracking import TrackingError, client_for, experiment_id

    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"\(600 characters\)': .*exceeds the maximum length of 500") as caught:
        experiment_id(client, "x" * 600)
    assert len(str(caught.value)) < 300


def test_a_checkpoint_dir_that_cannot_be_made_fails_before_training(tmp_path, mlflow_uri):
    import time

    from helpers import tiny_run

    from tlbench.errors import ConfigError
    from tlbench.train import train

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run = tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=50"])
    run.checkpoint_dir = str(blocker / "ckpt")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="checkpoint_dir=.*a_file/ckpt: cannot create or write this folder.*point checkpoint_dir"):
        train(run)
    assert time.monotonic() - started < 20  # refused up front, not after 50 epochs at the first checkpoint
