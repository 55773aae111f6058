"""A hyperparameter search = one Optuna study, one MLflow parent run, one child run per trial.

Trial budget without a lock: the process that creates the study puts `n_trials` WAITING trials in it
(a queue). Workers — processes on this machine or on others sharing the storage URL — take a WAITING
trial by atomically switching it to RUNNING (the storage refuses a second taker), so trials are never
duplicated and the study ends with exactly n_trials. A running trial sends a heartbeat; one whose
heartbeat stops (its worker was killed) is marked FAIL by the next worker that looks, and its
parameters go back into the queue, so a killed worker loses no trial. Workers stay until no trial is
waiting or running, and resuming is running the same command again.

What counts toward n_trials: COMPLETE, PRUNED, FAIL with a `fail_reason` (the trial itself failed,
e.g. a NaN loss), RUNNING and WAITING. A FAIL without `fail_reason` is a lost or interrupted trial whose
parameters were queued again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState, create_trial

from ..errors import ConfigError
from ..interrupts import sigterm_as_interrupt
from ..tracking import client_for
from .job import (
    ATTR_DEFINITION,
    ATTR_N_TRIALS,
    ATTR_PARENT,
    PARENT_WAIT_S,
    ConfigSource,
    SearchError,
    SearchJob,
    absolute_storage,
    compose,
    default_storage,
    masked,
)
from .outcome import record_outcome, summarize
from .queue import _worker_process, make_storage, work
from .space import SearchSpace, grid_size, merge_command_line, sampler_name, trial_overrides
from .trial import counts_toward_budget


# ----------------------------------------------------------------------------- the launcher
def prepare(
    space: SearchSpace,
    command_line: list[str] = (),
    *,
    n_trials: Optional[int] = None,
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    sampler: Any = None,
    pruner: Any = None,
    seed: Optional[int] = None,
    out_dir: Optional[str] = None,
    config_dir: Optional[str] = None,
    config_name: str = "config",
    extra_tags: Optional[dict[str, str]] = None,
    composer: Optional[Callable[[list[str]], Any]] = None,
) -> SearchJob:
    """Merge space, command line and options; check every searched value composes and validates."""
    from ..config import validate
    from ..paths import CONFIG_DIR
    from ..selection import SELECTION_METRICS
    from ..tracking import resolve_uri

    space, fixed = merge_command_line(space, list(command_line))
    settings = dataclasses.replace(space.study)
    for key, value in (
        ("n_trials", n_trials),
        ("storage", storage),
        ("study_name", study_name),
        ("sampler", sampler),
        ("pruner", pruner),
        ("seed", seed),
        ("out_dir", out_dir),
    ):
        if value is not None:
            setattr(settings, key, value)
    space = dataclasses.replace(space, study=settings)
    if not space.params:
        raise ConfigError(f"search space {space.name}: nothing to search; declare params or pass sweeps like optim.lr=tag(log,interval(1e-4,1e-1))")
    config_dir = config_dir or CONFIG_DIR
    probe_job = ConfigSource(config_dir, config_name, composer)
    run = validate(compose(probe_job, fixed))
    for name, param in space.params.items():  # fail now, not at trial 17
        probes = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in probes:
            value = int(value) if param.type == "int" else value
            try:
                validate(compose(probe_job, trial_overrides(fixed, {name: value})))
            except ConfigError as exc:
                raise ConfigError(f"search param {name}={value}: {exc}") from None
    if sampler_name(settings) == "grid":  # one trial per grid point, or fewer with --n-trials
        size = grid_size(space.params)
        settings.n_trials = min(n_trials or size, size)
    if settings.n_trials < 1:
        raise ConfigError(f"n_trials: must be ≥ 1, got {settings.n_trials}")
    if not (isinstance(settings.heartbeat_interval, int) and settings.heartbeat_interval >= 1):
        raise ConfigError(f"study.heartbeat_interval: must be a whole number of seconds ≥ 1, got {settings.heartbeat_interval!r}")
    if not (isinstance(settings.grace_period, int) and settings.grace_period > settings.heartbeat_interval):
        raise ConfigError(f"study.grace_period: must be a whole number of seconds > heartbeat_interval, got {settings.grace_period!r}")
    monitor, mode = SELECTION_METRICS[run.selection]
    if monitor is None:
        raise ConfigError(f"selection={run.selection}: a search needs a metric to optimise; use any rule but last")
    name = settings.study_name or space.name
    return SearchJob(
        space=space,
        fixed=fixed,
        config_dir=config_dir,
        config_name=config_name,
        storage=absolute_storage(settings.storage or default_storage()),
        study_name=name,
        n_trials=settings.n_trials,
        monitor=monitor,
        mode=mode,
        tracking_uri=resolve_uri(run.tracking.uri),
        experiment=run.tracking.experiment,
        tracking_tags=dict(run.tracking.tags),
        out_dir=str(Path(settings.out_dir or Path("outputs") / "search" / name).resolve()),
        max_epochs=run.trainer.max_epochs,
        extra_tags=dict(extra_tags or {}),
        composer=composer,
    )


#: Attempts at opening a storage whose tables another process is creating at the same moment.
OPEN_ATTEMPTS = 5


def open_storage(job: SearchJob):
    """The study's Optuna storage. Two processes opening a new database at once both create Optuna's tables
    (PostgreSQL: `type "studydirection" already exists` for the slower one); the slower one opens again,
    and then finds the tables there."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return make_storage(job)
        except ImportError:
            raise
        except Exception as exc:
            concurrent = "already exists" in str(exc) or "duplicate key" in str(exc)
            if not concurrent or attempt == OPEN_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)


def create_or_load_study(job: SearchJob) -> tuple[optuna.Study, bool]:
    """Create the study (and say so) or reopen it; the creator is the one that fills the queue."""
    try:
        storage = open_storage(job)
    except ImportError as exc:  # e.g. postgresql:// without its driver
        raise ConfigError(f"--storage {masked(job.storage)}: {exc} (PostgreSQL: pip install 'psycopg[binary]')") from None
    except Exception as exc:
        raise ConfigError(f"--storage {masked(job.storage)}: cannot open the Optuna storage: {str(exc).splitlines()[0]}") from None
    try:
        study = optuna.create_study(study_name=job.study_name, storage=storage, direction=job.direction)
        with warnings.catch_warnings():  # experimental in Optuna 3-4, stable in what it does for us
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([job.monitor])
        study.set_user_attr(ATTR_DEFINITION, study_definition(job))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        if not job.space.study.load_if_exists:
            raise ConfigError(f"study '{job.study_name}' already exists in {masked(job.storage)}; choose another study_name or set load_if_exists") from None
    study = optuna.load_study(study_name=job.study_name, storage=storage)
    check_same_definition(study, job)
    if study.direction.name.lower() != job.direction:
        raise ConfigError(
            f"study '{job.study_name}' was created to {study.direction.name.lower()}, but selection now asks to "
            f"{job.direction} {job.monitor}; use another study_name"
        )
    return study, False


def study_definition(job: SearchJob) -> dict[str, Any]:
    return {
        "space": job.space.name,
        "fixed": sorted(job.fixed),
        "params": {k: json.loads(json.dumps(dataclasses.asdict(p), default=str)) for k, p in sorted(job.space.params.items())},
    }


def check_same_definition(study: optuna.Study, job: SearchJob) -> None:
    """A resume with other fixed overrides or another space would mix two searches in one study (and
    report a best trial under settings it never ran): one line naming the differences instead."""
    stored = study.user_attrs.get(ATTR_DEFINITION)
    current = study_definition(job)
    if stored is None or stored == current:
        return
    differences = []
    for removed in sorted(set(stored["fixed"]) - set(current["fixed"])):
        differences.append(f"-{removed}")
    for added in sorted(set(current["fixed"]) - set(stored["fixed"])):
        differences.append(f"+{added}")
    for key in sorted(set(stored["params"]) | set(current["params"])):
        if stored["params"].get(key) != current["params"].get(key):
            differences.append(f"searched {key}: {stored['params'].get(key)} → {current['params'].get(key)}")
    raise ConfigError(
        f"study '{job.study_name}' in {masked(job.storage)} was made with other settings ({'; '.join(differences)}); "
        f"rerun it with its own overrides, or start another with --study-name"
    )


def fill_queue(study: optuna.Study, job: SearchJob, created: bool) -> int:
    """Make the study hold n_trials trials that count (queueing WAITING ones); returns how many were added."""
    if not created:
        for _ in range(30):  # its creator may still be filling the queue
            if ATTR_N_TRIALS in study.user_attrs:
                break
            time.sleep(1.0)
    counted = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
    missing = job.n_trials - counted
    for _ in range(max(0, missing)):
        study.add_trial(create_trial(state=TrialState.WAITING))
    if missing < 0:
        print(f"[tlbench search] study '{job.study_name}' already has {counted} trials (n_trials={job.n_trials}): nothing added", flush=True)
    study.set_user_attr(ATTR_N_TRIALS, max(job.n_trials, counted))
    return max(0, missing)


def _plain(value: Any) -> str:
    """A param as the UI should show it: `tpe`, not `"tpe"`; structured values as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _parent_tags(job: SearchJob) -> dict[str, Any]:
    return {
        "optuna.study": job.study_name,
        "optuna.storage": masked(job.storage),
        "search.space": job.space.name,
        "search.role": "parent",
        "selection_metric": job.monitor,
        "tlbench.parent": "search",
    }


def shared_parent(study: optuna.Study, job: SearchJob, created: bool) -> Optional[str]:
    """The MLflow parent run that every process of the study records its trials under, or None when this
    process is to open it. The process that created the study opens it; a process joining the study
    (another shell or machine, or a resume) waits for its id in the study, bounded by PARENT_WAIT_S,
    instead of opening a second parent. A parent in another tracking store is not reused."""
    if created:
        return None
    deadline = time.monotonic() + PARENT_WAIT_S
    while not (run_id := study.user_attrs.get(ATTR_PARENT)):
        if time.monotonic() > deadline:
            print(
                f"[tlbench search] study '{job.study_name}' has no MLflow parent run after {PARENT_WAIT_S}s (its creator stopped early?): opening one",
                flush=True,
            )
            return None
        time.sleep(0.5)
    try:
        client_for(job.tracking_uri).get_run(run_id)
        return run_id
    except Exception:  # another tracking store: start a new parent there
        return None


def run_search(job: SearchJob, workers: int = 1) -> dict[str, Any]:
    """Create/resume the study, open the MLflow parent run, run `workers` workers, record the outcome."""
    from ..tracking import Store, recorded_run, resolve_uri

    if workers < 1:
        raise ConfigError(f"--workers: must be ≥ 1, got {workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = create_or_load_study(job)
    store = Store(resolve_uri(job.tracking_uri), job.experiment, tags=dict(job.tracking_tags))
    parent_id = shared_parent(study, job, created)
    with recorded_run(store, job.study_name, _parent_tags(job), resume_run_id=parent_id) as parent:
        if parent_id is None:
            parent.log_params(
                {
                    "search.space": job.space.name,
                    "search.sampler": _plain(job.space.study.sampler),
                    "search.pruner": _plain(job.space.study.pruner),
                    "search.seed": job.space.study.seed,
                    "search.direction": job.direction,
                    "search.metric": job.monitor,
                    "search.fixed_overrides": " ".join(job.fixed),
                    "search.params": json.dumps({k: dataclasses.asdict(p) for k, p in job.space.params.items()}, default=str),
                }
            )
            study.set_user_attr(ATTR_PARENT, parent.run_id)
        parent.set_tags({"search.n_trials": job.n_trials})
        job = dataclasses.replace(job, parent_run_id=parent.run_id)
        added = fill_queue(study, job, created)
        print(
            f"[tlbench search] study '{job.study_name}' ({'new' if created else 'resumed'}, {added} trial(s) queued) "
            f"in {masked(job.storage)}; {job.direction} {job.monitor}; {workers} worker(s); MLflow parent run {parent.run_id}",
            flush=True,
        )
        started = time.time()
        _run_workers(job, workers)
        result = summarize(study, job)
        result.update(parent_run_id=parent.run_id, seconds=time.time() - started)
        record_outcome(study, job, parent, result)
        if result["queued"] or result["running"]:
            raise SearchError(f"workers stopped with {result['queued']} trial(s) queued and {result['running']} running; run the same command again to resume")
        return result


def _run_workers(job: SearchJob, workers: int) -> None:
    if workers == 1:
        work(job, 0)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    sendable = dataclasses.replace(job, composer=None)  # a closure over this process's Hydra loader
    processes = [context.Process(target=_worker_process, args=(sendable, i, threads), name=f"tlbench-search-{i}") for i in range(workers)]
    try:
        with sigterm_as_interrupt():
            for process in processes:
                process.start()
            for process in processes:
                process.join()
    except KeyboardInterrupt:
        for process in processes:  # SIGTERM: each worker queues its trial again and closes its run KILLED
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=60)
        raise
    bad = [p for p in processes if p.exitcode not in (0, None)]
    if bad:
        print(f"[tlbench search] {len(bad)} worker(s) exited abnormally: " + ", ".join(f"{p.name} ({p.exitcode})" for p in bad), flush=True)
