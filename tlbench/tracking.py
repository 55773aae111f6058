"""MLflow recording of one run: params = flattened config, config.yaml artifact, tags, per-step metrics,
and a final status (FINISHED, FAILED with the reason, or KILLED) that is set even when training dies."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlparse

from .config import RunConfig, TrackingConfig, flatten, to_plain_dict
from .errors import TlbenchError
from .interrupts import clear_stop_request, signals_held
from .processes import PROCESS_TAG, process_state, this_process

log = logging.getLogger(__name__)

DATASET_LOG_ATTEMPTS = 3
MAX_PARAM_LENGTH = 6000
#: Longest wait for another process that is creating the same SQLite store (a migration takes seconds).
STORE_LOCK_TIMEOUT_S = 120
#: Seconds a call to a remote tracking server may take, until tracking.timeout_s or `report --timeout` says.
DEFAULT_TIMEOUT_S = 20
T = TypeVar("T")
#: Config keys that do not change what is computed, left out of the config hash.
NON_SEMANTIC_KEYS = ("tracking", "output_dir", "checkpoint_dir", "resume", "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.fuse_heads")
#: Fields added after runs were recorded, at the value that computes what their absence did: left out of
#: the config hash at that value, so the hashes (and skip_done) of older runs stay valid.
NEUTRAL_DEFAULTS = {
    "data.val_labels_per_class": None,
    "data.target_eval": "split",
    "data.sources": None,
    "data.holdout": None,
    "head.solver": "optimizer",
    "adapt.kernel": "batch",
}


#: Set once a run of this process was closed as KILLED by an interrupt (the CLI then ignores more Ctrl-C).
interrupted = False


class TrackingError(TlbenchError):
    """The MLflow store cannot be reached or written."""


def resolve_uri(configured: str) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite database `mlflow.db` in the working dir."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def ui_hint(uri: str) -> str:
    """How to look at the runs in `uri`: a tracking server is already a UI; a local store needs `mlflow ui`."""
    if is_remote(uri):
        return f"open {uri} in a browser (the tracking server is the UI)"
    return f"mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)"


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def within(timeout_s: float, call: Callable[[], T], uri: str, what: str) -> T:
    """`call()` in a daemon thread, given up after `timeout_s`: name resolution, a silent server or
    MLflow's own retries (minutes in all) cannot hold the run longer. A call given up on is left to end
    on its own (each request is bounded too, see `bound_http_requests`)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"mlflow {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TrackingError(f"tracking.uri: MLflow server {uri} did not answer ({what}) within {timeout_s:g}s; check the server or use a sqlite:/// URI")
    if "error" in outcome:
        raise server_error(outcome["error"], uri, what) or outcome["error"]
    return outcome["value"]


def server_error(exc: BaseException, uri: str, what: str) -> TrackingError | None:
    """One line for a request that never got an answer (refused, reset, timed out); None for answers
    such as "no such run", which are the caller's business."""
    message = str(exc)
    if not message.startswith("API request to ") and not isinstance(exc, OSError):
        return None
    reason = message.split(" failed with exception ", 1)[-1].splitlines()[0][:200]
    return TrackingError(f"tracking.uri: MLflow server {uri} failed ({what}): {reason}")


_timeout_s: float = DEFAULT_TIMEOUT_S


def bound_http_requests(timeout_s: float) -> None:
    """From now on in this process, each MLflow HTTP request gives up after `timeout_s`, without retries
    (MLflow's defaults, 120 s and 7 retries with backoff, add up to minutes per call); `client_for` calls
    that name no timeout use it too."""
    global _timeout_s
    _timeout_s = timeout_s
    # a second more than the per-call deadline of `within`, which then speaks first with the clearer line
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(math.ceil(timeout_s) + 1)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


def check_reachable(uri: str, timeout_s: float) -> None:
    """Fail fast with one line instead of hanging on an unreachable tracking server."""
    if not is_remote(uri):
        return
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            raise TrackingError(f"tracking.uri: cannot reach MLflow server {uri} ({exc}); start it or use a sqlite:/// URI") from None

    within(timeout_s, connect, uri, "connect")


def check_server(uri: str, timeout_s: float) -> None:
    """The server accepts a connection and answers one request, both within `timeout_s`; nothing for a
    local store. Also bounds every later HTTP request of this process."""
    if is_remote(uri):
        client_for(uri, timeout_s).search_experiments(max_results=1)


def config_hash(run: RunConfig) -> str:
    """Hash of everything that changes what a run computes (seed included): the key for skip_done."""
    flat = flatten(to_plain_dict(run))
    semantic = {
        k: v
        for k, v in flat.items()
        if not any(k == p or k.startswith(p + ".") for p in NON_SEMANTIC_KEYS)
        and v != {}  # an empty options dict computes what its absence did: hashes of older runs stay valid
        and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
    }
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def standard_tags() -> dict[str, str]:
    """MLflow's own tags, which fill the UI's "User", "Source" and "Version" columns of a run."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name, e.g. a container user without a passwd entry
        user = "unknown"
    tags = {"mlflow.source.name": "tlbench", "mlflow.source.type": "LOCAL", "mlflow.user": user}
    commit = git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def store_creation_lock(uri: str, timeout_s: float = STORE_LOCK_TIMEOUT_S):
    """One process at a time opens a SQLite store for the first time: MLflow creates and migrates a new
    store's schema without coordination, so processes starting together on a fresh path fail with
    "table already exists" or leave half-migrated tables. Keyed by the database path (`<db>.lock`)."""
    return _sqlite_file_lock(uri, ".lock", timeout_s, "creating the MLflow store")


def claim_lock(uri: str, timeout_s: float = STORE_LOCK_TIMEOUT_S):
    """One process at a time claims a configuration in a SQLite store (`<db>.claim.lock`), so two that
    start it together cannot both see no claim; other stores rely on the check after creating the run."""
    return _sqlite_file_lock(uri, ".claim.lock", timeout_s, "claiming a configuration in")


@contextmanager
def _sqlite_file_lock(uri: str, suffix: str, timeout_s: float, doing: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = sqlite_path(uri)
    lock = FileLock(f"{path}{suffix}") if path is not None else None
    try:
        if lock is not None:
            lock.acquire(timeout=timeout_s)
    except Timeout:
        raise TrackingError(f"tracking.uri: another process has held {path}{suffix} for {timeout_s:.0f}s while {doing} {uri}") from None
    except OSError:  # e.g. a read-only folder: no lock, but then no schema can be created there either
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


SQLITE_HEADER = b"SQLite format 3\x00"
#: Stores larger than this skip the page-by-page integrity check (it reads the whole file).
QUICK_CHECK_MAX_BYTES = 512 * 1024 * 1024
_checked_stores: set[Path] = set()


def check_sqlite_store(uri: str, timeout_s: float) -> None:
    """Before MLflow touches a SQLite store: its folder can be written, the file (if any) is an intact
    SQLite database, and its write lock can be taken within `timeout_s` (another process may hold it;
    SQLite's busy handler waits, bounded). Each failure is one TrackingError line naming the file;
    without this, MLflow retried a read-only or damaged store for two minutes and then raised a
    traceback. Checked once per store and process."""
    import sqlite3

    path = sqlite_path(uri)
    if path is None or path in _checked_stores:
        return
    folder = path.parent
    where = f"tracking.uri: MLflow store {path}"
    if not path.exists():
        if folder.exists() and not os.access(folder, os.W_OK):
            raise TrackingError(f"{where} cannot be created: folder {folder} is not writable (read-only); set tracking.uri to a writable place")
        try:
            folder.mkdir(parents=True, exist_ok=True)  # what MLflow would do, but with one line when it cannot
        except OSError as exc:
            raise TrackingError(
                f"{where} cannot be created: its folder {folder} cannot be made ({exc.strerror or exc}); set tracking.uri to a writable place"
            ) from None
        return  # created (and migrated) by MLflow under store_creation_lock
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"{where} cannot be read: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{where} is not an SQLite database (damaged, or another file); move it away to start a new store, or set tracking.uri")
    if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
        raise TrackingError(f"{where} is read-only (SQLite also needs to write beside it in {folder}); set tracking.uri to a writable place")
    started = time.monotonic()
    try:
        connection = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # the write lock: waits up to timeout_s for another writer
            connection.execute("ROLLBACK")
            if path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                verdict = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {verdict}")
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise TrackingError(
                f"{where} stayed locked by another process for {time.monotonic() - started:.0f}s (tracking.timeout_s); try again when it is done"
            ) from None
        raise TrackingError(f"{where} cannot be used: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"{where} is damaged ({exc}); move it away to start a new store, or set tracking.uri") from None
    _checked_stores.add(path)


class BoundedClient:
    """An MlflowClient for a remote server whose every call answers, fails or is given up within
    `timeout_s`, with one line naming the server. Artifact uploads and downloads may legitimately take
    longer: they are bounded per request only."""

    PER_REQUEST_ONLY = frozenset({"log_artifact", "log_artifacts", "download_artifacts"})

    def __init__(self, client, uri: str, timeout_s: float):
        self.client_for, self.uri, self.timeout_s = client, uri, timeout_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client_for, name)
        if not callable(attr) or name in self.PER_REQUEST_ONLY:
            return attr
        return lambda *args, **kwargs: within(self.timeout_s, lambda: attr(*args, **kwargs), self.uri, name)


def masked(url: str) -> str:
    """A database URL without its password, for tags and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def check_database_server(uri: str, timeout_s: float) -> None:
    """A database store (postgresql://, mysql://, …) answers and accepts the login within `timeout_s`:
    MLflow itself retries a refused connection for about two minutes and then raises a traceback."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": max(1, int(timeout_s))}, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ImportError as exc:
        raise TrackingError(
            f"tracking.uri={masked(uri)}: its database driver is not installed ({exc}); for PostgreSQL: pip install 'psycopg[binary]'"
        ) from None
    except Exception as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise TrackingError(
            f"tracking.uri={masked(uri)}: cannot connect to the database within tracking.timeout_s={timeout_s:g} ({detail}); "
            "is the server running and the URI right?"
        ) from None


def client_for(uri: str, timeout_s: float | None = None):
    """A client whose store is ready. Remote: reachable now, every call bounded by `timeout_s` (default:
    the last bound set in this process). SQLite: the first touch, which creates and migrates a new file,
    holds the store's lock."""
    from mlflow.tracking import MlflowClient

    if is_remote(uri):
        timeout_s = timeout_s or _timeout_s
        bound_http_requests(timeout_s)
        check_reachable(uri, timeout_s)
        return BoundedClient(MlflowClient(tracking_uri=uri), uri, timeout_s)
    if sqlite_path(uri) is None and "://" in uri and not uri.startswith("file:"):
        check_database_server(uri, timeout_s or _timeout_s)
    with store_creation_lock(uri):
        check_sqlite_store(uri, timeout_s or _timeout_s)
        return MlflowClient(tracking_uri=uri)  # builds the store: creates and migrates a new SQLite file


@dataclass(frozen=True)
class Store:
    """The tracking store one run (or one command) records in: the URI resolved once, and one client,
    bounded and checked on first use, reused for every call after it."""

    uri: str
    experiment: str
    timeout_s: float | None = None
    #: tracking.tags: added to every run this store creates.
    tags: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, tracking: TrackingConfig) -> "Store":
        return cls(resolve_uri(tracking.uri), tracking.experiment, tracking.timeout_s, dict(tracking.tags))

    @cached_property
    def client(self):
        return client_for(self.uri, self.timeout_s)


def experiment_id(client, name: str) -> str:
    """Get or create the experiment; tolerates another process creating it at the same moment."""
    reason = ""
    for _ in range(5):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:  # the kind makes the MLflow UI open on the runs table, not its GenAI trace views
            return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
        except TlbenchError:  # the server did not answer: already one line
            raise
        except Exception as exc:  # created concurrently by another worker: look it up again
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.2)
    shown = name if len(name) <= 80 else f"{name[:40]}…({len(name)} characters)"
    raise TrackingError(f"tracking.experiment: could not create or find MLflow experiment '{shown}': {reason[:300]}")


def finished_run_with_hash(store: Store, digest: str) -> str | None:
    """Run id of a FINISHED run with this config hash in the experiment, if any (for skip_done)."""
    client = store.client
    found = client.get_experiment_by_name(store.experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.config_hash = '{digest}' and attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


class RunRecorder:
    """One MLflow run; use `recorded_run(...)` to get the status handling right. Every write holds
    Ctrl-C/SIGTERM until it is done: an interrupt landing inside the store's own code (a SQLite commit,
    a pooled connection being returned) could leave that store unable to close the run as KILLED."""

    def __init__(self, client, run_id: str, uri: str):
        self.client = client
        self.run_id = run_id
        self.uri = uri

    def _write(self, method: str, *args, **kwargs) -> None:
        with signals_held():
            getattr(self.client, method)(self.run_id, *args, **kwargs)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._write("log_batch", params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_metric_points([(metrics, step, int(time.time() * 1000))])

    def log_metric_points(self, points: list[tuple[dict[str, float], int, int]], model_id: str | None = None) -> None:
        """(metrics, step, timestamp in ms) points, written in as few store requests as MLflow allows;
        with `model_id`, they are also that logged model's metrics."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), timestamp, step, model_id=model_id) for metrics, step, timestamp in points for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._write("log_batch", metrics=items[start : start + 1000])

    def start_selected_model(self, rule: str) -> str:
        """The checkpoint the selection rule chose, as an MLflow logged model of this run (pending until
        `finish_selected_model`); its test metrics are logged with its id. The experiment's Models tab
        lists every run's selected model with these metrics as visible columns, where the runs table
        hides all metrics behind its column picker."""
        with signals_held():
            experiment = self.client.get_run(self.run_id).info.experiment_id
            model = self.client.create_logged_model(experiment, name=f"selected-by-{rule}", source_run_id=self.run_id, tags={"selection": rule})
        return model.model_id

    def finish_selected_model(self, model_id: str) -> None:
        from mlflow.entities import LoggedModelStatus

        with signals_held():
            self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)

    def log_datasets(self, datasets: dict[str, tuple[str, str]]) -> None:
        """Role (`source`, `target`) → (data set name, fingerprint): the runs table's Dataset column."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(Dataset(name=name, digest=digest[:36], source_type="tlbench", source=name), tags=[InputTag("mlflow.data.context", role)])
            for role, (name, digest) in datasets.items()
        ]
        from mlflow.exceptions import MlflowException

        for attempt in range(DATASET_LOG_ATTEMPTS):
            try:
                self._write("log_inputs", datasets=inputs)
                return
            except MlflowException as error:
                # The store looks a data set up, then inserts it: two runs of a sweep logging the same new
                # data set at the same moment make one of them hit the unique key. Again, it finds the row.
                if attempt + 1 == DATASET_LOG_ATTEMPTS:
                    log.warning("the runs table's Dataset column stays empty for this run: %s", str(error).splitlines()[0])
                    return
                time.sleep(0.2 * (attempt + 1))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._write("log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, path: str) -> None:
        self._write("log_text", text, path)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._write("log_artifact", str(local_path), artifact_path)


def process_rank() -> int:
    """This process's rank in a multi-process (DDP) run; 0 for the process the user started. Lightning's
    launcher and torchrun set these variables in the processes they start, before those run any code."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


class SilentRecorder(RunRecorder):
    """The recorder of a rank other than 0: the run belongs to rank 0, so nothing is created or written
    (before: every rank created its own run, 7 FAILED runs for trainer.devices=7)."""

    def __init__(self, uri: str):
        super().__init__(client=None, run_id="", uri=uri)

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_metric_points(self, points, model_id: str | None = None) -> None:
        pass

    def start_selected_model(self, rule: str) -> str:
        return ""

    def finish_selected_model(self, model_id: str) -> None:
        pass

    def log_datasets(self, datasets) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_text(self, text: str, path: str) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass


def close_dead_runs(client, experiment: str, digest: str | None = None) -> list[str]:
    """RUNNING runs (of this config, or any in the experiment: sweep parents too) whose process is gone
    (kill -9, power loss, a second Ctrl-C, a store that went away mid-sweep) are marked KILLED, so that
    they can be resumed and are never mistaken for running ones."""
    closed = []
    which = f"tags.config_hash = '{digest}' and " if digest else ""
    for run in client.search_runs([experiment], which + "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get(PROCESS_TAG, "")
        if process_state(owner) == "gone":
            client.set_tag(run.info.run_id, "failure_reason", f"its process ({owner}) ended without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by process %s, which is gone: marked KILLED", run.info.run_id, owner)
            closed.append(run.info.run_id)
    return closed


def unfinished_run_with_hash(store: Store, digest: str) -> str | None:
    """Newest run with this config hash that ended unfinished (KILLED, FAILED, or RUNNING with its process
    gone): the run that `resume=true` continues. A run whose process is alive is not taken over."""
    client = store.client
    found = client.get_experiment_by_name(store.experiment)
    if found is None:
        return None
    close_dead_runs(client, found.experiment_id, digest)
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.config_hash = '{digest}' and attributes.status != 'FINISHED'",
        max_results=20,
        order_by=["attributes.start_time DESC"],
    )
    runs = [r for r in runs if r.info.status != "RUNNING" or process_state(r.data.tags.get(PROCESS_TAG, "")) != "alive"]
    return runs[0].info.run_id if runs else None


class ClaimedElsewhere(TlbenchError):
    """Another live process is already running this configuration (skip_done sweeps started together)."""

    def __init__(self, run_id: str):
        super().__init__(f"configuration already running as run {run_id}")
        self.run_id = run_id


def running_claim(client, experiment_id: str, digest: str, mine: str | None = None) -> str | None:
    """The run that holds the claim on this config hash: a FINISHED run (it finished while this process
    was preparing), else the earliest-started RUNNING run (run id breaks ties) whose process is alive, or
    on another host, where liveness cannot be told; `mine` always counts as alive. None when no run holds it."""
    finished = client.search_runs([experiment_id], f"tags.config_hash = '{digest}' and attributes.status = 'FINISHED'", max_results=1)
    if finished:
        return finished[0].info.run_id
    runs = client.search_runs([experiment_id], f"tags.config_hash = '{digest}' and attributes.status = 'RUNNING'", max_results=100)
    live = [r for r in runs if r.info.run_id == mine or process_state(r.data.tags.get(PROCESS_TAG, "")) != "gone"]
    return min(live, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if live else None


@contextmanager
def recorded_run(store: Store, run_name: str, tags: dict[str, Any], resume_run_id: str | None = None, claim: bool = False) -> Iterator[RunRecorder]:
    """Create (or, with `resume_run_id`, reopen) an MLflow run and always close it: FINISHED on success,
    KILLED on interrupt (SIGINT/SIGTERM), FAILED with a `failure_reason` tag on any error (re-raised).
    The run is tagged with its process; earlier runs of the config left RUNNING by a dead process are
    closed as KILLED first. A Ctrl-C while the run is being closed waits until it is closed.

    `claim` (skip_done): when another live process started the same configuration first, the new run is
    deleted again and ClaimedElsewhere raised, so sweeps started together split the work."""
    uri = store.uri
    if process_rank() != 0:
        yield SilentRecorder(uri)
        return
    client = store.client
    owner = {PROCESS_TAG: this_process()}
    holder = None
    try:
        if resume_run_id:
            client.update_run(resume_run_id, status="RUNNING")
            client.set_tag(resume_run_id, PROCESS_TAG, owner[PROCESS_TAG])
            if "failure_reason" in client.get_run(resume_run_id).data.tags:  # why it stopped last time, not now
                client.delete_tag(resume_run_id, "failure_reason")
            run_id = resume_run_id
        else:
            exp_id = experiment_id(client, store.experiment)
            close_dead_runs(client, exp_id)  # this config's, and any other run or parent a dead process left RUNNING
            all_tags = {**standard_tags(), **store.tags, **{k: str(v) for k, v in tags.items()}, **owner}
            with claim_lock(uri) if claim else nullcontext():
                run_id = client.create_run(exp_id, run_name=run_name or None, tags=all_tags).info.run_id
                holder = running_claim(client, exp_id, str(tags["config_hash"]), mine=run_id) if claim and "config_hash" in tags else None
                if holder and holder != run_id:  # closed, then deleted: no RUNNING run is left behind
                    client.set_terminated(run_id, "KILLED")
                    client.delete_run(run_id)
    except TlbenchError:
        raise
    except Exception as exc:
        raise TrackingError(f"tracking.uri: cannot write to MLflow store {uri}: {str(exc).splitlines()[0]}") from None
    if holder and holder != run_id:
        raise ClaimedElsewhere(holder)
    recorder = RunRecorder(client, run_id, uri)
    try:
        yield recorder
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns Ctrl-C into SystemExit(1) after cleaning up
        global interrupted
        interrupted = True
        clear_stop_request()
        with signals_held():
            client.set_tag(recorder.run_id, "failure_reason", "interrupted")
            client.set_terminated(recorder.run_id, "KILLED")
        log.warning("run %s marked KILLED; the same command with resume=true continues it from its last checkpoint", run_id)
        if isinstance(stop, SystemExit) and not stop.code:  # Lightning's SIGTERMException would exit 0: a stop is not a success
            raise KeyboardInterrupt("signal 15") from None
        raise
    except BaseException as exc:
        with signals_held():
            status = getattr(exc, "run_status", None)  # e.g. a pruned search trial closes KILLED, not FAILED
            if status:
                for key, value in getattr(exc, "run_tags", {}).items():
                    client.set_tag(recorder.run_id, key, str(value))
                client.set_terminated(recorder.run_id, status)
            else:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                client.set_tag(recorder.run_id, "failure_reason", f"{type(exc).__name__}: {reason}"[:5000])
                client.set_terminated(recorder.run_id, "FAILED")
        raise
    else:
        with signals_held():
            client.set_terminated(recorder.run_id, "FINISHED")
