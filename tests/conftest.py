"""Test environment: caches and MLflow stores in temp dirs, offline, and small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tlbench_cache")
    os.environ["TLBENCH_CACHE"] = str(cache)
    os.environ["TLBENCH_OFFLINE"] = "1"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


from tlbench.cli import compose  # noqa: E402  (re-exported for the tests)

#: A seconds-long real run: small CNN on a small synthetic source set.
TINY = [
    "backbone=small_cnn",
    "data=digits",
    "data.synthetic_size=400",
    "data.batch_size=32",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def tiny_run(tmp_path, uri: str, extra=()):
    """A validated RunConfig for TINY + `extra`, recording into `uri`, writing files under tmp_path."""
    from tlbench.config import validate

    run = validate(compose(TINY + [f"tracking.uri={uri}", *extra]))
    run.output_dir = str(tmp_path / "out")
    run.checkpoint_dir = str(tmp_path / "ckpt")
    return run


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))



def interrupt_at_epoch(epoch: int):
    """A Lightning callback raising KeyboardInterrupt when `epoch` starts: a Ctrl-C in the middle of a run."""
    import pytorch_lightning as pl

    class InterruptAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise KeyboardInterrupt

    return InterruptAtEpoch()
