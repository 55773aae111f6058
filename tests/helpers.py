"""Helpers the tests share: a seconds-long run config, composing like the CLI, the config tree."""

from __future__ import annotations

from pathlib import Path

from tlbench.composition import compose_config as compose  # noqa: F401  (re-exported for the tests)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

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


def validated_with(group: str, node: dict):
    """A whole run config validated with `group` replaced by `node`: the path every range check takes
    (ranges live in tlbench/config_rules.py only)."""
    from omegaconf import OmegaConf

    from tlbench.config import validate

    container = OmegaConf.to_container(compose([]), resolve=True)
    container[group] = dict(node)
    return validate(container)
