"""`tlbench eval`: re-score a finished run on other data — another target domain, another folder of the
same classes — without training, recorded as a child run of the original.

    tlbench eval <run_id> data.target=usps            # the run's selected checkpoint on a new target
    tlbench eval <run_id>                              # the same data again: reproduces the recorded test numbers

Only `data.*` keys may change: the model is the run's, with the weights of the checkpoint its selection
rule chose. The child run carries the overrides, the evaluated domains and the test metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, TlbenchError


def _check_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* overrides can change (the model is the run's); got {', '.join(bad)}")


def _with_data_overrides(run, overrides: list[str]):
    from omegaconf import OmegaConf

    from .config import to_plain_dict, validate

    merged = OmegaConf.merge(OmegaConf.create(to_plain_dict(run)), OmegaConf.from_dotlist(overrides))
    return validate(merged)


def evaluate_run(run_id: str, overrides: list[str], uri: str = "", checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Test the run's selected checkpoint on its data with `overrides`; record a child run. Returns the
    test metrics and the child's run_id."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from .config import validate
    from .data.datamodule import DomainDataModule
    from .module import TransferModule
    from .restore import load_run
    from .tracking import Store, client_for, recorded_run, resolve_uri

    _check_overrides(overrides)
    uri = resolve_uri(uri)
    client = client_for(uri)
    module = load_run(run_id, uri, checkpoint_dir, module_class=TransferModule, client=client)
    original = client.get_run(run_id)
    recorded_config = validate(OmegaConf.create(Path(client.download_artifacts(run_id, "config.yaml")).read_text()))
    run = _with_data_overrides(recorded_config, overrides)
    datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
    datamodule.setup("test")
    if datamodule.num_classes != module.num_classes:
        raise ConfigError(
            f"{run.data.target} has {datamodule.num_classes} classes, the model of run {run_id} "
            f"predicts {module.num_classes}; evaluate on data with the same classes"
        )
    experiment = client.get_experiment(original.info.experiment_id).name
    store = Store(uri, experiment, run.tracking.timeout_s, dict(run.tracking.tags))
    tags = {"mlflow.parentRunId": run_id, "eval_of": run_id, "overrides": " ".join(overrides)}
    with recorded_run(store, f"eval · {original.info.run_name} · {' '.join(overrides) or 'same data'}", tags) as recorder:
        recorder.log_params({"eval.source": run.data.source, "eval.target": run.data.target, "eval.overrides": " ".join(overrides)})
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        recorder.log_metrics(metrics, step=0)
    return {**metrics, "run_id": recorder.run_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlbench eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", help="a finished tlbench run")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.target=usps")
    parser.add_argument("--uri", default="", help="MLflow store of the run (default: tracking.uri's default)")
    parser.add_argument("--checkpoint-dir", help="where the run's checkpoints are, if not where it wrote them")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from .console import quiet_libraries

    quiet_libraries()
    try:
        result = evaluate_run(args.run_id, args.overrides, args.uri, args.checkpoint_dir)
    except TlbenchError as exc:
        print(f"tlbench eval: error: {exc}", file=sys.stderr)
        return 2
    shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(result.items()) if k != "run_id")
    print(f"{shown}\nrecorded as run {result['run_id']}, a child of {args.run_id}")
    return 0
