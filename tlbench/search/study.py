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
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState, create_trial

from ..errors import ConfigError, TlbenchError
from ..interrupts import sigterm_as_interrupt
from .pruning import OptunaPruning, close_pruned_run
from .space import SearchSpace, build_pruner, build_sampler, grid_size, merge_command_line, sampler_name, suggest, trial_overrides

log = logging.getLogger("tlbench.search")

#: Study user attrs written by tlbench.
ATTR_N_TRIALS = "tlbench.n_trials"
ATTR_PARENT = "tlbench.mlflow_parent_run_id"
#: What a study searches: its space's parameters and the fixed overrides. A resume must match it.
ATTR_DEFINITION = "tlbench.definition"
#: Longest wait of a process joining a study for the MLflow parent run its creator opens.
PARENT_WAIT_S = 60
#: Set by the Hydra sweeper in its own process: compose through the running app's config loader.
_IN_PROCESS_COMPOSER: Optional[Callable[[list[str]], Any]] = None


class SearchError(TlbenchError):
    """A search that cannot go on (e.g. workers died with trials still queued)."""

    exit_code = 1


@dataclass
class SearchJob:
    """Everything a worker needs; plain data, so spawned worker processes receive it pickled."""

    space: SearchSpace
    #: Overrides every trial gets (space overrides, then the command line).
    fixed: list[str]
    config_dir: str
    config_name: str
    storage: str
    study_name: str
    n_trials: int
    monitor: str
    mode: str
    tracking_uri: str
    experiment: str
    out_dir: str
    max_epochs: int
    #: The config's tracking.tags (the parent run gets them too; trials get them from their config).
    tracking_tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str = ""
    #: Extra MLflow tags for every trial (the Hydra sweeper adds sweep_dir).
    extra_tags: dict[str, str] = field(default_factory=dict)
    #: Seconds between looks at the queue while other workers' trials are still running.
    poll_s: float = 2.0

    @property
    def direction(self) -> str:
        return "maximize" if self.mode == "max" else "minimize"


# ----------------------------------------------------------------------------- config and storage
def compose(target, overrides: list[str]):
    """The run config for these overrides, composed as `tlbench` composes it (`target` has config_dir
    and config_name: a SearchJob or a ConfigSource)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if _IN_PROCESS_COMPOSER is not None:
            return _IN_PROCESS_COMPOSER(list(overrides))
        with initialize_config_dir(config_dir=target.config_dir, version_base="1.3", job_name="tlbench_search"):
            return hydra_compose(config_name=target.config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


@dataclass
class ConfigSource:
    config_dir: str
    config_name: str = "config"


def default_storage() -> str:
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def absolute_storage(url: str) -> str:
    """A relative SQLite path made absolute, so every worker opens the same file whatever its cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url[len(prefix):] not in ("", ":memory:"):
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def masked(url: str) -> str:
    """The storage URL without its password, for tags and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_storage(job: SearchJob) -> optuna.storages.RDBStorage:
    settings = job.space.study
    sqlite = job.storage.startswith("sqlite")
    # pysqlite: no transaction handling of its own; serialize_sqlite_transactions issues BEGIN IMMEDIATE.
    engine_kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            job.storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=RequeueLostTrial(job),
        )
    if sqlite:
        serialize_sqlite_transactions(storage.engine)
    return storage


def serialize_sqlite_transactions(engine) -> None:
    """Start every transaction with BEGIN IMMEDIATE (the write lock) on a SQLite storage.

    Optuna claims a WAITING trial with SELECT … FOR UPDATE, which SQLite ignores: two processes could
    both read WAITING and both take the trial. With the lock taken at BEGIN, transactions run one after
    another (waiting up to the connect timeout), so a claim is atomic; it also avoids SQLite's
    read-then-write lock upgrade deadlocks ("database is locked") between worker processes.
    Server databases (PostgreSQL, MySQL) honour FOR UPDATE and are left alone.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _mlflow(job: SearchJob):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=job.tracking_uri)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state != TrialState.FAIL or "fail_reason" in trial.user_attrs


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a lost or interrupted trial's parameters again (a grid point keeps its grid id)."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space", "fixed_params")}
    study.add_trial(create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs=system_attrs, user_attrs={"retry_of": trial.number},
    ))


class RequeueLostTrial:
    """Optuna's stale-trial callback: a trial whose heartbeat stopped was lost with its worker. Queue its
    parameters again and close its MLflow run as KILLED with `lost=true`."""

    def __init__(self, job: SearchJob):
        self.job = job

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if "fail_reason" not in trial.user_attrs:
            requeue(study, trial)
        print(f"[tlbench search] trial {trial.number} lost (no heartbeat for {self.job.space.study.grace_period}s): "
              "marked FAIL, its parameters queued again", flush=True)
        try:
            client = _mlflow(self.job)
            for run in _trial_runs(client, self.job, trial):
                if run.info.status == "RUNNING":
                    client.set_tag(run.info.run_id, "lost", "true")
                    client.set_tag(run.info.run_id, "failure_reason", "worker lost: no heartbeat; trial requeued")
                    client.set_terminated(run.info.run_id, "KILLED")
        except Exception as exc:  # the requeue matters more than the run's status
            log.warning("could not close the MLflow run of lost trial %d: %s", trial.number, exc)


def _trial_runs(client, job: SearchJob, trial: optuna.trial.FrozenTrial) -> list:
    experiment = client.get_experiment_by_name(job.experiment)
    if experiment is None:
        return []
    run_id = trial.user_attrs.get("mlflow_run_id")
    query = f"tags.`optuna.study` = '{job.study_name}' and tags.`optuna.trial` = '{trial.number}'"
    runs = client.search_runs([experiment.experiment_id], query)
    return [r for r in runs if run_id is None or r.info.run_id == run_id] or runs


# ----------------------------------------------------------------------------- workers
class Heartbeat:
    """Records the trial's heartbeat now and every `interval` seconds until the trial ends."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a missed beat is harmless unless it lasts a grace period
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def claim_waiting_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, job: SearchJob) -> Optional[tuple[optuna.Trial, int]]:
    """Take a WAITING trial from the queue (WAITING → RUNNING is atomic in the storage): (trial, trial id) or None.
    The sampler is reseeded for the claimed trial's number (see `trial_seed`) before it draws anything."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue  # another worker took it
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.record_heartbeat(trial_id)  # at once: a worker killed now still leaves a stale-able trial
        if not isinstance(study.sampler, optuna.samplers.GridSampler):  # grid: point = trial number, see trial_seed
            study.sampler = build_sampler(job.space.study, job.space.params, trial_seed(job, frozen.number))
        return optuna.Trial(study, trial_id), trial_id
    return None


def trial_seed(job: SearchJob, number: int) -> int:
    """The sampler's seed for trial `number`. Trial numbers are handed out by the storage, so they differ
    between every worker of the study, whether a process of `--workers`, another `tlbench search` in
    another shell or on another machine, or a resumed run: with one seed per process, processes that
    see the same history drew the same points (6 trials, 3 distinct). A study is still reproducible:
    the same space seed gives the same seed to each trial number. The grid sampler is the exception: it
    shuffles the grid with its seed and gives trial n the n-th point, so every process must keep the
    study's own seed (per-process seeds shuffled differently and could repeat points)."""
    return (job.space.study.seed * 1_000_003 + 7_919 * number) % 2**32


def open_study(job: SearchJob) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = make_storage(job)
    study = optuna.load_study(
        study_name=job.study_name, storage=storage,
        sampler=build_sampler(job.space.study, job.space.params, job.space.study.seed),  # reseeded per trial
        pruner=build_pruner(job.space.study, job.max_epochs),
    )
    return study, storage


def progress(study: optuna.Study, job: SearchJob) -> str:
    """`trial 7/20 done, ETA 95s`: finished trials of the whole study (every process), the ETA from the
    study's mean trial time and the trials still to run."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_toward_budget(t)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished if t.datetime_start and t.datetime_complete]
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    left = max(job.n_trials - len(finished), 0)
    eta = f", ETA {sum(durations) / len(durations) * left / max(running, 1):.0f}s" if durations and left else ""
    return f"trial {len(finished)}/{job.n_trials} done{eta}"


def work(job: SearchJob, worker_index: int = 0) -> int:
    """Run trials from the queue until none is waiting or running; returns how many this worker ran."""
    import pytorch_lightning  # noqa: F401  (importing it sets its loggers to INFO: quiet them afterwards)

    from ..console import quiet_libraries

    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, storage = open_study(job)
    ran = 0
    with sigterm_as_interrupt():
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # lost trials → FAIL + queued again
            claimed = claim_waiting_trial(study, storage, job)
            if claimed is None:
                if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    return ran
                time.sleep(job.poll_s)  # others' trials still run; one may be lost and come back
                continue
            trial, trial_id = claimed
            with Heartbeat(storage, trial_id, job.space.study.heartbeat_interval):
                run_trial(job, study, trial)
            ran += 1


def _worker_process(job: SearchJob, worker_index: int, threads: int) -> None:
    """Entry point of a spawned worker process."""
    import torch

    torch.set_num_threads(threads)
    try:
        work(job, worker_index)
    except KeyboardInterrupt:
        raise SystemExit(130)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:1000] if not isinstance(exc, TlbenchError) else text[:1000]


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
            "optuna.study": job.study_name, "optuna.trial": trial.number, "optuna.storage": masked(job.storage),
            "search.space": job.space.name, **job.extra_tags,
        }
        if job.parent_run_id:
            tags["mlflow.parentRunId"] = job.parent_run_id
        metrics = train(run, extra_callbacks=[callback], extra_tags=tags)
    except optuna.TrialPruned as exc:
        epoch = getattr(exc, "epoch", callback.pruned_epoch if callback else None)
        if callback is not None and callback.run_id:
            try:
                close_pruned_run(_mlflow(job), callback.run_id, epoch)
            except Exception as mlflow_exc:
                log.warning("could not mark MLflow run %s as pruned: %s", callback.run_id, mlflow_exc)
        trial.set_user_attr("epochs", callback.epochs if callback else 0)
        study.tell(trial, state=TrialState.PRUNED)
        print(f"[tlbench search] trial {trial.number} PRUNED after epoch {epoch} ({shown}) {time.time() - started:.0f}s"
              f"  {progress(study, job)}", flush=True)
        return
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        requeue(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
        print(f"[tlbench search] trial {trial.number} interrupted: marked FAIL, its parameters queued again", flush=True)
        raise
    except Exception as exc:  # the trial failed (NaN loss, bad combination, …): the study goes on
        reason = _one_line(exc)
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
    print(f"[tlbench search] trial {trial.number} COMPLETE {job.monitor}={value:.4f} ({shown}) {time.time() - started:.0f}s"
          f"  {progress(study, job)}", flush=True)


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
) -> SearchJob:
    """Merge space, command line and options; check every searched value composes and validates."""
    from ..cli import CONFIG_DIR
    from ..config import validate
    from ..selection import SELECTION_METRICS
    from ..tracking import resolve_uri

    space, fixed = merge_command_line(space, list(command_line))
    settings = dataclasses.replace(space.study)
    for key, value in (("n_trials", n_trials), ("storage", storage), ("study_name", study_name), ("sampler", sampler),
                       ("pruner", pruner), ("seed", seed), ("out_dir", out_dir)):
        if value is not None:
            setattr(settings, key, value)
    space = dataclasses.replace(space, study=settings)
    if not space.params:
        raise ConfigError(f"search space {space.name}: nothing to search; declare params or pass sweeps like optim.lr=tag(log,interval(1e-4,1e-1))")
    config_dir = config_dir or CONFIG_DIR
    probe_job = ConfigSource(config_dir, config_name)
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
    name = settings.study_name or space.name
    return SearchJob(
        space=space, fixed=fixed, config_dir=config_dir, config_name=config_name,
        storage=absolute_storage(settings.storage or default_storage()), study_name=name,
        n_trials=settings.n_trials, monitor=monitor, mode=mode,
        tracking_uri=resolve_uri(run.tracking.uri), experiment=run.tracking.experiment, tracking_tags=dict(run.tracking.tags),
        out_dir=str(Path(settings.out_dir or Path("outputs") / "search" / name).resolve()),
        max_epochs=run.trainer.max_epochs, extra_tags=dict(extra_tags or {}),
    )


def create_or_load_study(job: SearchJob) -> tuple[optuna.Study, bool]:
    """Create the study (and say so) or reopen it; the creator is the one that fills the queue."""
    try:
        storage = make_storage(job)
    except ImportError as exc:  # e.g. postgresql:// without its driver
        raise ConfigError(f"--storage {masked(job.storage)}: {exc} (PostgreSQL: pip install 'psycopg[binary]')") from None
    except Exception as exc:
        raise ConfigError(f"--storage {masked(job.storage)}: cannot open the Optuna storage: {str(exc).splitlines()[0]}") from None
    try:
        study = optuna.create_study(study_name=job.study_name, storage=storage, direction=job.direction)
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
    return {"space": job.space.name, "fixed": sorted(job.fixed),
            "params": {k: json.loads(json.dumps(dataclasses.asdict(p), default=str)) for k, p in sorted(job.space.params.items())}}


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
        "optuna.study": job.study_name, "optuna.storage": masked(job.storage), "search.space": job.space.name,
        "search.role": "parent", "selection_metric": job.monitor, "tlbench.parent": "search",
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
            print(f"[tlbench search] study '{job.study_name}' has no MLflow parent run after {PARENT_WAIT_S}s "
                  "(its creator stopped early?): opening one", flush=True)
            return None
        time.sleep(0.5)
    try:
        _mlflow(job).get_run(run_id)
        return run_id
    except Exception:  # another tracking store: start a new parent there
        return None


def run_search(job: SearchJob, workers: int = 1) -> dict[str, Any]:
    """Create/resume the study, open the MLflow parent run, run `workers` workers, record the outcome."""
    from ..config import TrackingConfig
    from ..tracking import recorded_run

    if workers < 1:
        raise ConfigError(f"--workers: must be ≥ 1, got {workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = create_or_load_study(job)
    tracking = TrackingConfig(uri=job.tracking_uri, experiment=job.experiment, tags=dict(job.tracking_tags))
    parent_id = shared_parent(study, job, created)
    with recorded_run(tracking, job.study_name, _parent_tags(job), resume_run_id=parent_id) as parent:
        if parent_id is None:
            parent.log_params({
                "search.space": job.space.name, "search.sampler": _plain(job.space.study.sampler),
                "search.pruner": _plain(job.space.study.pruner), "search.seed": job.space.study.seed,
                "search.direction": job.direction, "search.metric": job.monitor, "search.fixed_overrides": " ".join(job.fixed),
                "search.params": json.dumps({k: dataclasses.asdict(p) for k, p in job.space.params.items()}, default=str),
            })
            study.set_user_attr(ATTR_PARENT, parent.run_id)
        parent.set_tags({"search.n_trials": job.n_trials})
        job = dataclasses.replace(job, parent_run_id=parent.run_id)
        added = fill_queue(study, job, created)
        print(f"[tlbench search] study '{job.study_name}' ({'new' if created else 'resumed'}, {added} trial(s) queued) "
              f"in {masked(job.storage)}; {job.direction} {job.monitor}; {workers} worker(s); MLflow parent run {parent.run_id}", flush=True)
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
    processes = [context.Process(target=_worker_process, args=(job, i, threads), name=f"tlbench-search-{i}") for i in range(workers)]
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


def summarize(study: optuna.Study, job: SearchJob) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    complete = by_state[TrialState.COMPLETE]
    result: dict[str, Any] = {
        "study_name": job.study_name, "storage": masked(job.storage), "metric": job.monitor, "direction": job.direction,
        "n_trials": job.n_trials,
        "complete": len(complete), "pruned": len(by_state[TrialState.PRUNED]),
        "failed": sum(1 for t in by_state[TrialState.FAIL] if counts_toward_budget(t)),
        "lost": sum(1 for t in by_state[TrialState.FAIL] if not counts_toward_budget(t)),
        "queued": len(by_state[TrialState.WAITING]), "running": len(by_state[TrialState.RUNNING]),
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
        "best_value": None, "best_params": {}, "best_trial": None, "best_run_id": None,
    }
    if complete:
        best = study.best_trial
        result.update(best_value=best.value, best_params=dict(best.params), best_trial=best.number,
                      best_overrides=list(best.user_attrs.get("overrides", [])),
                      best_run_id=best.user_attrs.get("mlflow_run_id"), best_test_target_acc=best.user_attrs.get("test/target_acc"))
    return result


def record_outcome(study: optuna.Study, job: SearchJob, parent, result: dict[str, Any]) -> None:
    """Best params/value, the trials table and the history and importance plots on the parent run."""
    metrics = {k: float(result[k]) for k in ("complete", "pruned", "failed", "lost", "epochs")}
    if result["best_value"] is not None:
        metrics["best_value"] = float(result["best_value"])
        parent.set_tags({"best_trial": result["best_trial"], "best_run_id": result["best_run_id"] or "",
                         **{f"best_params.{k}": v for k, v in result["best_params"].items()}})
    parent.log_metrics(metrics, step=len(study.get_trials(deepcopy=False)))
    parent.log_text(json.dumps({k: v for k, v in result.items()}, indent=2, default=str), "search/summary.json")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            frame = study.trials_dataframe()
            frame.to_csv(Path(tmp) / "trials.csv", index=False)
            parent.log_artifact(Path(tmp) / "trials.csv", "search")
        except Exception as exc:
            log.warning("trials table not recorded: %s", exc)
        for name, plot in (("history.png", plot_history), ("param_importance.png", plot_importance)):
            try:
                note = plot(study, job, Path(tmp) / name)
            except Exception as exc:  # plots are a convenience, never the reason a search fails
                note = f"{name} not drawn: {type(exc).__name__}: {exc}"
            if note:
                parent.log_text(note + "\n", f"search/{Path(name).stem}.txt")
            else:
                parent.log_artifact(Path(tmp) / name, "search")


def plot_history(study: optuna.Study, job: SearchJob, path: Path) -> Optional[str]:
    """Objective per trial (pruned trials at their last reported value) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not trials:
        return "no completed or pruned trial to plot"
    better = max if job.mode == "max" else min
    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue")
    ax.scatter([t.number for t in pruned], [t.value for t in pruned], label="pruned (last epoch)", color="tab:gray", marker="x")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        last = max(t.number for t in trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(job.monitor)
    ax.set_title(f"{job.study_name}: {job.direction} {job.monitor}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def plot_importance(study: optuna.Study, job: SearchJob, path: Path) -> Optional[str]:
    """fANOVA parameter importance; needs at least two completed trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"parameter importance needs ≥ 2 completed trials; this study has {len(complete)}"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(study)
    if not importances:
        return "parameter importance: no parameter varied across completed trials"
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {job.monitor} (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
