"""The `tlbench` command: Hydra entry point for runs and sweeps, plus subcommands (`tlbench report ...`).

User mistakes end with one line on stderr and a non-zero exit; in a multirun sweep a failing run is
recorded as FAILED and the sweep goes on, and the command exits 1 at the end if any run failed.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .console import quiet_libraries
from .errors import TlbenchError
from .paths import CONFIG_DIR
from .user_errors import describe_os_error, full_disk

log = logging.getLogger("tlbench")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_from_hydra(cfg: DictConfig) -> float | None:
    """Validate, train, report. Returns the selected test target accuracy (used by sweepers)."""
    from .config import validate
    from .runs import load_runs, summary_table
    from .train import train

    quiet_libraries()  # again: Hydra reconfigures logging when a job starts
    run = validate(cfg)
    tags = {}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if not any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in hc.overrides.task):
            run.output_dir = hc.runtime.output_dir  # the job's folder, unless the user named one
        tags["overrides"] = shlex.join(hc.overrides.task)  # `tlbench <this>` composes the run's config again
        if _in_multirun():
            from .plan import default_run_name
            from .sweep_run import ENV_PARENT, swept_values

            run.tracking.run_name = default_run_name(run, swept_values(hc.sweep.dir, list(hc.overrides.task)))
            tags.update(sweep_dir=str(Path(hc.sweep.dir).resolve()), sweep_job=hc.job.num)
            if os.environ.get(ENV_PARENT):  # set by the sweep callback when this job started
                tags["mlflow.parentRunId"] = os.environ[ENV_PARENT]
    metrics = train(run, extra_tags=tags)
    if metrics.get("skipped") and tags.get("mlflow.parentRunId"):  # skip_done: the finished run joins this sweep
        from .sweep_run import mark_reused

        mark_reused(run.tracking.uri, metrics["run_id"], tags["mlflow.parentRunId"], tags["sweep_dir"])
    if not _in_multirun() and metrics.get("run_id"):  # "" on DDP ranks other than 0, which record nothing
        runs = load_runs(run.tracking.uri, run.tracking.experiment, f"attributes.run_id = '{metrics['run_id']}'")
        print(summary_table(runs))
        print(
            f"MLflow run {metrics['run_id']} in experiment '{run.tracking.experiment}'"
            + (f"; its backbone for a next transfer: backbone.weights={metrics['backbone_weights']}" if metrics.get("backbone_weights") else "")
        )
    return metrics.get("test/target_acc")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_entry(cfg: DictConfig) -> float | None:
    try:
        return run_from_hydra(cfg)
    except TlbenchError as exc:
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:  # the file system refused (read-only folder, full disk): one line, no traceback
        line = describe_os_error(exc)
        if line is None:
            raise
        return _fail(line, 1)
    except Exception as exc:  # a bug or library error: keep the traceback in the job log, one line on screen
        full = full_disk([cfg.get("checkpoint_dir"), HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None, "."])
        if full:  # e.g. torch.save's "unexpected pos" on a full disk: the disk, not a bug
            log.debug("run failed on a full disk", exc_info=True)
            return _fail(
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} — the disk holding {full} is full; "
                "free space, or point checkpoint_dir/hydra.run.dir to another disk",
                1,
            )
        if not _in_multirun():
            raise
        log.exception("run failed")
        return _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)


def _fail(message: str, exit_code: int) -> None:
    print(f"tlbench: error: {message}", file=sys.stderr)
    if _in_multirun():  # the sweep goes on; its end counts failed jobs (from the store, and from this marker)
        from .sweep_run import mark_job_failed

        mark_job_failed(HydraConfig.get().runtime.output_dir, message)
        return None
    raise SystemExit(exit_code)


SUBCOMMANDS = {
    "report": "tlbench.report.cli:main",
    "search": "tlbench.search.cli:main",
    "rank": "tlbench.rank:main",
    "compare": "tlbench.compare.cli:main",
    "eval": "tlbench.evaluate:main",
}


def _hydra_main() -> None:
    """hydra_entry(), with Hydra's own errors (misspelled key, unknown option, bad override, a folder it
    cannot create) as one line instead of its multi-line text. HYDRA_FULL_ERROR=1 makes Hydra raise
    them to us rather than print them; a user who sets it gets Hydra's full output as before."""
    from .user_errors import describe

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        hydra_entry()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_entry()
    except Exception as exc:
        line = describe(exc, sys.argv[1:])
        if line is None:
            raise
        print(f"tlbench: error: {line}", file=sys.stderr)
        raise SystemExit(2 if describe_os_error(exc) is None else 1) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def _hide_schema_options() -> None:
    """`tlbench --help` lists each group's options; `schema` (the typed defaults every yaml of a group
    starts from, config.register_schemas) is not one a user picks, so the listing leaves it out."""
    from hydra._internal.hydra import Hydra

    listing = Hydra.format_config_groups
    if getattr(listing, "hides_schema", False):
        return

    def without_schema(self, predicate, compact: bool = True) -> str:
        lines = listing(self, predicate, compact).splitlines()
        kept = []
        for line in lines:
            group, _, options = line.partition(": ")
            shown = [o for o in options.split(", ") if o != "schema"]
            kept.append(f"{group}: {', '.join(shown)}" if compact and options else line)
        return "\n".join(kept) + "\n"

    without_schema.hides_schema = True
    Hydra.format_config_groups = without_schema


def _first_interrupt(signum, frame) -> None:
    """Ctrl-C raises KeyboardInterrupt once; later ones are ignored, as are any after the run was closed
    KILLED (a Ctrl-C that arrived while a checkpoint was written is re-raised by signals_held, not here).
    A second Ctrl-C used to land inside the shutdown, e.g. in a garbage-collector callback, and print a
    KeyboardInterrupt traceback. Lightning's own handler likewise ignores SIGINT after the first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tracking = sys.modules.get("tlbench.tracking")
    if tracking is not None and tracking.interrupted:  # the run is closed already: let the process end
        return
    from .interrupts import request_stop

    request_stop(signum)


def main() -> None:
    quiet_libraries(import_libraries=False)  # a run quiets Lightning and MLflow again once it imports them
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        import importlib

        module_name, func = SUBCOMMANDS[sys.argv[1]].split(":")
        command = sys.argv.pop(1)
        sys.argv[0] = f"tlbench {command}"
        raise SystemExit(getattr(importlib.import_module(module_name), func)())
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _first_interrupt)
    from .interrupts import quiet_dropped_interrupts

    quiet_dropped_interrupts()
    from . import sweep_run

    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        _hide_schema_options()
    try:
        _hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown: the run is already closed KILLED (logged above)
        sweep_run.close_interrupted_sweep("KILLED")
        print("tlbench: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException as exc:
        if type(exc).__name__ == "TerminatedWorkerError":  # joblib: a worker process was killed (OOM, SIGKILL)
            sweep_run.close_interrupted_sweep("FAILED", close_dead_children=True)
            print(
                "tlbench: error: a worker process of the sweep died (killed, or out of memory); the sweep stopped. "
                "Its unfinished runs are marked KILLED; the same command with tracking.skip_done=true runs the rest",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        sweep_run.close_interrupted_sweep("KILLED" if sys.exc_info()[0] is SystemExit else "FAILED")
        raise
    if sweep_run.failed_jobs:
        print(f"tlbench: {sweep_run.failed_jobs} run(s) of the sweep failed (listed above)", file=sys.stderr)
        raise SystemExit(1)
