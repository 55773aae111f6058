"""One trial: suggested values → overrides → validated config → train() as a child MLflow run, and the
bookkeeping of which trials count toward the budget and how far the study is."""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState, create_trial

from ..errors import ConfigError, TlbenchError, one_line
from ..tracking import client_for
from .job import SearchJob, compose, log, masked
from .pruning import OptunaPruning, close_pruned_run
from .space import suggest, trial_overrides


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state != TrialState.FAIL or "fail_reason" in trial.user_attrs


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a lost or interrupted trial's parameters again (a grid point keeps its grid id)."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space", "fixed_params")}
    study.add_trial(
        create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs=system_attrs,
            user_attrs={"retry_of": trial.number},
        )
    )


def progress(study: optuna.Study, job: SearchJob) -> str:
    """`trial 7/20 done, ETA 95s`: finished trials of the whole study (every process), the ETA from the
    study's mean trial time and the trials still to run."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_toward_budget(t)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished if t.datetime_start and t.datetime_complete]
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    left = max(job.n_trials - len(finished), 0)
    eta = f", ETA {sum(durations) / len(durations) * left / max(running, 1):.0f}s" if durations and left else ""
    return f"trial {len(finished)}/{job.n_trials} done{eta}"


def run_trial(job: SearchJob, study: optuna.Study, trial: optuna.Trial) -> None:
    """One trial: suggested values → overrides → validated config → train() as a child MLflow run."""
    from ..config import validate
    from ..selection import SELECTION_METRICS
    from ..train import train

    started = time.time()
    values = suggest(trial, job.space.params)
    overrides = trial_overrides(job.fixed, values)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    trial_dir = Path(job.out_dir) / f"trial_{trial.number}"
    callback: Optional[OptunaPruning] = None
    try:
        run = validate(compose(job, overrides))
        if SELECTION_METRICS[run.selection] != (job.monitor, job.mode):
            raise ConfigError(f"selection: a trial may not change the selection rule of the study ({job.monitor}); do not search 'selection'")
        run.output_dir = str(trial_dir)
        run.checkpoint_dir = str(trial_dir / "checkpoints")
        run.resume = False
        run.tracking.skip_done = False  # every trial is its own run, even for a config seen before
        run.tracking.run_name = f"{job.study_name}-trial{trial.number}"
        callback = OptunaPruning(trial, job.monitor, job.mode)
        tags = {
            "optuna.study": job.study_name,
            "optuna.trial": trial.number,
            "optuna.storage": masked(job.storage),
            "search.space": job.space.name,
            **job.extra_tags,
        }
        if job.parent_run_id:
            tags["mlflow.parentRunId"] = job.parent_run_id
        metrics = train(run, extra_callbacks=[callback], extra_tags=tags)
    except optuna.TrialPruned as exc:
        epoch = getattr(exc, "epoch", callback.pruned_epoch if callback else None)
        if callback is not None and callback.run_id:
            try:
                close_pruned_run(client_for(job.tracking_uri), callback.run_id, epoch)
            except Exception as mlflow_exc:
                log.warning("could not mark MLflow run %s as pruned: %s", callback.run_id, mlflow_exc)
        trial.set_user_attr("epochs", callback.epochs if callback else 0)
        study.tell(trial, state=TrialState.PRUNED)
        print(f"[tlbench search] trial {trial.number} PRUNED after epoch {epoch} ({shown}) {time.time() - started:.0f}s  {progress(study, job)}", flush=True)
        return
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        requeue(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
        print(f"[tlbench search] trial {trial.number} interrupted: marked FAIL, its parameters queued again", flush=True)
        raise
    except Exception as exc:  # the trial failed (NaN loss, bad combination, …): the study goes on
        reason = one_line(exc, limit=1000, with_type=not isinstance(exc, TlbenchError))
        if not isinstance(exc, TlbenchError):
            log.error("trial %d failed:\n%s", trial.number, traceback.format_exc())
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("epochs", callback.epochs if callback else 0)
        study.tell(trial, state=TrialState.FAIL)
        print(f"[tlbench search] trial {trial.number} FAIL ({shown}): {reason}  {progress(study, job)}", flush=True)
        return
    finally:
        if not job.space.study.keep_checkpoints:
            shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
    value = callback.best
    for key, number in metrics.items():
        if isinstance(number, float):
            trial.set_user_attr(key, number)
    trial.set_user_attr("mlflow_run_id", metrics.get("run_id"))
    trial.set_user_attr("epochs", callback.epochs)
    if value is None or not math.isfinite(value):
        trial.set_user_attr("fail_reason", f"no finite {job.monitor} was logged")
        study.tell(trial, state=TrialState.FAIL)
        print(f"[tlbench search] trial {trial.number} FAIL ({shown}): no finite {job.monitor}", flush=True)
        return
    study.tell(trial, value)
    print(
        f"[tlbench search] trial {trial.number} COMPLETE {job.monitor}={value:.4f} ({shown}) {time.time() - started:.0f}s  {progress(study, job)}", flush=True
    )
