"""`tlbench -m hydra/sweeper=tlbench_optuna ...`: the same study as `tlbench search` (tlbench.search.study).

    tlbench -m hydra/sweeper=tlbench_optuna hydra.sweeper.space=dann hydra.sweeper.n_trials=20 backbone=small_cnn
    tlbench -m hydra/sweeper=tlbench_optuna backbone=small_cnn 'optim.lr=tag(log,interval(1e-4,1e-1))' freeze=full,linear_probe

Sweep overrides on the command line (and `hydra.sweeper.params`) become search params; plain overrides are
fixed for every trial. Trials do not go through Hydra's launcher: the pruning callback has to sit inside
the training loop, so each trial calls tlbench's train() directly (with `workers` > 1, in worker processes).
tlbench.search is imported lazily: Hydra imports this module on every `tlbench` start.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules before registering them in
# sys.modules, and dataclasses cannot resolve string annotations then.
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class TlbenchOptunaSweeperConf:
    _target_: str = "hydra_plugins.tlbench_optuna_sweeper.tlbench_optuna_sweeper.TlbenchOptunaSweeper"
    #: conf/search/<name>.yaml or a yaml path; null → only `params` and command-line sweeps.
    space: Optional[str] = None
    #: Extra search params in Hydra sweep syntax, e.g. {optim.lr: "tag(log,interval(1e-4,1e-1))"}.
    params: Optional[Dict[str, str]] = None
    n_trials: Optional[int] = None
    workers: int = 1
    storage: Optional[str] = None
    study_name: Optional[str] = None
    sampler: Optional[str] = None
    pruner: Optional[str] = None
    seed: Optional[int] = None


ConfigStore.instance().store(group="hydra/sweeper", name="tlbench_optuna", node=TlbenchOptunaSweeperConf, provider="tlbench")


class TlbenchOptunaSweeper(Sweeper):
    def __init__(
        self,
        space: Optional[str] = None,
        params: Optional[Dict[str, str]] = None,
        n_trials: Optional[int] = None,
        workers: int = 1,
        storage: Optional[str] = None,
        study_name: Optional[str] = None,
        sampler: Optional[str] = None,
        pruner: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.options = dict(n_trials=n_trials, storage=storage, study_name=study_name, sampler=sampler, pruner=pruner, seed=seed)
        self.space_name = space
        self.params = dict(params or {})
        self.workers = workers
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config

    def _config_dir(self) -> str:
        """The app's primary config dir (for worker processes, which compose on their own)."""
        from tlbench.paths import CONFIG_DIR

        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return source.path
        return CONFIG_DIR

    def sweep(self, arguments: List[str]) -> Any:
        from tlbench.search import study as search
        from tlbench.search.cli import print_result
        from tlbench.search.space import SearchSpace, load_space

        assert self.config is not None and self.hydra_context is not None
        space = load_space(self.space_name) if self.space_name else SearchSpace(name="sweep")
        command_line = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        loader, master = self.hydra_context.config_loader, self.config
        sweep_dir = str(Path(self.config.hydra.sweep.dir).resolve())

        # In this process, compose through the app's own loader (its search path and hydra overrides).
        def compose(overrides: List[str]) -> DictConfig:
            cfg = loader.load_sweep_config(master, overrides)
            with open_dict(cfg):
                del cfg["hydra"]  # a trial is no Hydra job (hydra.job.num & co. stay unset)
            return cfg

        job = search.prepare(
            space,
            command_line,
            **self.options,
            out_dir=sweep_dir,
            config_dir=self._config_dir(),
            config_name=self.config.hydra.job.config_name or "config",
            extra_tags={"sweep_dir": sweep_dir},
            composer=compose,
        )
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(sweep_dir) / "multirun.yaml")
        result = search.run_search(job, workers=self.workers)
        print_result(result, job)
        return result
