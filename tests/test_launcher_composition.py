"""The default launcher (hydra/launcher=tlbench) runs each job on the configuration Hydra's sweeper already
composed to check the batch, instead of composing every job a second time."""

from __future__ import annotations

from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode

from tlbench.paths import CONFIG_DIR


def test_a_sweep_composes_each_job_once_and_each_job_gets_its_own_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path}/sweep", "hydra.callbacks={}"], RunMode.MULTIRUN)
    compositions = []
    compose = loader.load_configuration
    monkeypatch.setattr(loader, "load_configuration", lambda *a, **k: compositions.append(k.get("overrides")) or compose(*a, **k))
    seen = []

    def task(config):  # run_job hands the job its config without the hydra node
        seen.append((config, HydraConfig.get().job.num))
        return config.adapt.name

    context = HydraContext(config_loader=loader, callbacks=Callbacks())
    sweeper = Plugins.instance().instantiate_sweeper(config=master, hydra_context=context, task_function=task)
    assert type(sweeper.launcher).__name__ == "TlbenchLauncher"  # the default launcher
    try:
        [returns] = sweeper.sweep(["adapt=source_only,dann,coral", "seed=3"])
    finally:
        GlobalHydra.instance().clear()
    assert [r.return_value for r in returns] == ["source_only", "dann", "coral"]
    assert len(compositions) == 3  # the sweeper's check composed them; the launcher took those
    assert len({id(c) for c, _ in seen}) == 3 and [num for _, num in seen] == [0, 1, 2]
    assert all(c.seed == 3 for c, _ in seen)
