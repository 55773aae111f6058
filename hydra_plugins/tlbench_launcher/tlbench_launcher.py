"""`hydra/launcher=tlbench` (the default): Hydra's local launcher, plus fused head sweeps.

Before its jobs run one by one, the sweep's configurations are composed once; those that train only heads
on the same cached features are trained together (tlbench.fused_heads), and each job then records its own
run from that outcome. Jobs that cannot be fused run exactly as under Hydra's basic launcher. Other
launchers (joblib, submitit) run every job on its own.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules before registering them in
# sys.modules, and dataclasses cannot resolve string annotations then.
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class TlbenchLauncherConf:
    _target_: str = "hydra_plugins.tlbench_launcher.tlbench_launcher.TlbenchLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="tlbench", node=TlbenchLauncherConf, provider="tlbench")


class ComposedOnce:
    """Hydra's sweeper composes every job of a batch to check it, throws the result away, and the launcher
    composes it again to run it (about 0.25 s per job, a third of a fused head's cost). Installed on the
    config loader they share, this keeps what the sweeper composed so the launcher takes it instead of
    composing again; each composition is handed out once, so a job never shares its config object."""

    def __init__(self, loader) -> None:
        self.compose = loader.load_sweep_config
        self.kept: dict = {}
        loader.load_sweep_config = self.composing_and_keeping

    def composing_and_keeping(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        config = self.compose(master_config, sweep_overrides)
        self.kept[(id(master_config), tuple(sweep_overrides))] = config
        return config

    def take(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        kept = self.kept.pop((id(master_config), tuple(sweep_overrides)), None)
        return kept if kept is not None else self.compose(master_config, sweep_overrides)


class TlbenchLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.compositions = ComposedOnce(hydra_context.config_loader)

    def _compose(self, overrides: Sequence[str], index: int) -> DictConfig:
        config = self.compositions.take(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = index
            config.hydra.job.num = index
        return config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        configs = [self._compose(overrides, initial_job_idx + offset) for offset, overrides in enumerate(job_overrides)]
        from tlbench.fused_heads import prepare_sweep

        prepare_sweep(configs)
        returns: List[JobReturn] = []
        for config, overrides in zip(configs, job_overrides):
            log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
