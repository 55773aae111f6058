"""The trial queue: workers claim WAITING trials atomically, keep them alive with a heartbeat, and lost
trials (a worker killed mid-trial) are failed and their parameters queued again."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Optional

import optuna
from optuna.trial import TrialState

from ..interrupts import sigterm_as_interrupt
from ..tracking import client_for
from .job import SearchJob, log
from .space import build_pruner, build_sampler
from .trial import requeue, run_trial


class RequeueLostTrial:
    """Optuna's stale-trial callback: a trial whose heartbeat stopped was lost with its worker. Queue its
    parameters again and close its MLflow run as KILLED with `lost=true`."""

    def __init__(self, job: SearchJob):
        self.job = job

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if "fail_reason" not in trial.user_attrs:
            requeue(study, trial)
        print(
            f"[tlbench search] trial {trial.number} lost (no heartbeat for {self.job.space.study.grace_period}s): marked FAIL, its parameters queued again",
            flush=True,
        )
        try:
            client = client_for(self.job.tracking_uri)
            for run in _trial_runs(client, self.job, trial):
                # RUNNING, or already KILLED by a later run that saw its process gone (tracking.close_dead_runs)
                if run.info.status in ("RUNNING", "KILLED"):
                    client.set_tag(run.info.run_id, "lost", "true")
                    client.set_tag(run.info.run_id, "failure_reason", "worker lost: no heartbeat; trial requeued")
                    if run.info.status == "RUNNING":
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
        study_name=job.study_name,
        storage=storage,
        sampler=build_sampler(job.space.study, job.space.params, job.space.study.seed),  # reseeded per trial
        pruner=build_pruner(job.space.study, job.max_epochs),
    )
    return study, storage


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
        raise SystemExit(130) from None


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
