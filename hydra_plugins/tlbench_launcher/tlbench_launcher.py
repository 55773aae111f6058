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


class TlbenchLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _compose(self, overrides: Sequence[str], index: int) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
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
