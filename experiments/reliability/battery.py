"""Reliability battery (issue 18): hostile-but-fair cases against real `tlbench` processes, real SQLite
stores, real signals and real sockets, written to results/reliability.md.

    nice -n 15 .venv/bin/python experiments/reliability/battery.py [--only GROUP[,GROUP]] [--out FILE]

Per case: exit code, lines of output (stdout + stderr, non-empty; for a signal case the lines printed
after the signal), seconds until the process ended, runs left RUNNING in the MLflow store afterwards,
runs lost (a run that should have been recorded and is missing), and whether code from a data file ran.
Goal per case: ≤ 3 lines within 30 s, 0 runs lost, 0 left RUNNING, no code run from data. Cases that
need root (a read-only or full tmpfs mounted for the case) are skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
#: A run of a few seconds: small CNN, small synthetic source set.
TINY = [
    "backbone=small_cnn",
    "data=digits",
    "data.synthetic_size=300",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]
#: A run long enough to be interrupted after its first epoch.
LONG = [o for o in TINY if not o.startswith(("trainer.max_epochs", "trainer.limit_train_batches"))] + [
    "trainer.max_epochs=6",
    "trainer.limit_train_batches=6",
    "trainer.log_every_n_steps=1",
]
GOAL_LINES, GOAL_SECONDS = 3, 30.0


@dataclass
class Outcome:
    exit_code: Optional[int] = None
    lines: int = 0
    seconds: float = 0.0
    running: int = 0
    lost: int = 0
    code_ran: bool = False
    #: "error": must fail in ≤ 3 lines within 30 s; "works": must succeed; "signal": lines after the signal.
    expect: str = "error"
    note: str = ""
    last_line: str = ""
    skipped: str = ""

    def met(self) -> bool:
        if self.skipped:
            return True
        clean = self.running == 0 and self.lost == 0 and not self.code_ran
        if self.expect == "error":
            return clean and self.exit_code not in (0, None) and self.lines <= GOAL_LINES and self.seconds <= GOAL_SECONDS
        if self.expect == "signal":
            return clean and self.lines <= GOAL_LINES
        return clean and self.exit_code == 0


@dataclass
class Case:
    group: str
    name: str
    run: Callable[[Path], Outcome]


CASES: list[Case] = []


def case(group: str, name: str):
    def register(func: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append(Case(group, name, func))
        return func

    return register


# ----------------------------------------------------------------------------- running processes
def _foreground_signals() -> None:
    """Ctrl-C as in a terminal: a battery started in the background (`... &`) inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt, so the signal cases would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Process:
    """A tlbench process whose output lines are timestamped as they arrive."""

    args: list[str]
    cwd: Path
    env: dict = field(default_factory=dict)
    lines: list[tuple[float, str]] = field(default_factory=list)

    def start(self) -> "Process":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TLBENCH_OFFLINE": "1", **self.env}
        if "MLFLOW_TRACKING_URI" not in self.env:
            env.pop("MLFLOW_TRACKING_URI", None)
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "tlbench", *self.args],
            cwd=self.cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_foreground_signals,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for _, line in self.lines):
                return True
            if self.popen.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = 300) -> tuple[int, float]:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            code = self.popen.wait()
        self._reader.join(timeout=10)
        return code, time.monotonic() - self.started

    def text_lines(self, since: float = 0.0) -> list[str]:
        return [line for t, line in self.lines if t >= since and line.strip()]


def tlbench(tmp: Path, *args: str, env: Optional[dict] = None, expect: str = "error", timeout: float = 300) -> Outcome:
    process = Process(list(args), tmp, env or {}).start()
    code, seconds = process.finish(timeout)
    lines = process.text_lines()
    return Outcome(exit_code=code, lines=len(lines), seconds=seconds, expect=expect, last_line=lines[-1] if lines else "")


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def runs_by_status(db: Path) -> dict[str, int]:
    """Run counts per status, read with plain sqlite3 (no MLflow needed, nothing migrated)."""
    if not db.exists():
        return {}
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        rows = connection.execute("select status, count(*) from runs group by status").fetchall()
        connection.close()
        return dict(rows)
    except sqlite3.Error:
        return {}


def with_store_counts(outcome: Outcome, db: Path, expected_runs: int = 0) -> Outcome:
    counts = runs_by_status(db)
    outcome.running = counts.get("RUNNING", 0)
    outcome.lost = max(0, expected_runs - sum(counts.values()))
    return outcome


def config_case(name: str, *overrides: str, group: str = "config") -> None:
    """A bad value or key: one line, exit ≠ 0, no run created (0 RUNNING, nothing lost)."""

    def run(tmp: Path) -> Outcome:
        flags = [o for o in overrides if o.startswith("-")]
        rest = [o for o in overrides if not o.startswith("-")]
        outcome = tlbench(tmp, *flags, *TINY, f"tracking.uri={store(tmp)}", *rest)
        return with_store_counts(outcome, tmp / "mlflow.db")

    case(group, name)(run)


# ----------------------------------------------------------------------------- config
for _name, _overrides in [
    ("optim.lr=nan", ["optim.lr=nan"]),
    ("optim.lr=inf", ["optim.lr=inf"]),
    ("optim.weight_decay=-1", ["optim.weight_decay=-1"]),
    ("optim.momentum=2 (sgd)", ["optim.name=sgd", "optim.momentum=2"]),
    ("trainer.precision=17", ["trainer.precision=17"]),
    ("trainer.devices=0", ["trainer.devices=0"]),
    ("trainer.devices=abc", ["trainer.devices=abc"]),
    ("trainer.accelerator=tpu9", ["trainer.accelerator=tpu9"]),
    ("trainer.strategy=foo", ["trainer.strategy=foo"]),
    ("trainer.limit_train_batches=0", ["trainer.limit_train_batches=0"]),
    ("trainer.limit_val_batches=0", ["trainer.limit_val_batches=0"]),
    ("head.dropout=1.5", ["head.dropout=1.5"]),
    ("head.hidden=[0]", ["head.hidden=[0]"]),
    ("adapt=dann adapt.dropout=2", ["adapt=dann", "adapt.dropout=2"]),
    ("adapt=mcc adapt.temperature=0", ["adapt=mcc", "adapt.temperature=0"]),
    ("seed=-1", ["seed=-1"]),
    ("seed=500000 (seed·10007 overflows)", ["seed=500000"]),
    ("data.synthetic_size=5", ["data.synthetic_size=5"]),
    ("data.synthetic_size=60 (empty val split)", ["data.synthetic_size=60"]),
    ("misspelled key trainer.max_epoch=1", ["trainer.max_epoch=1"]),
    ("misspelled key in a sweep: -m trainer.max_epoch=1,2", ["-m", "trainer.max_epoch=1,2"]),
    ("unknown option adapt=foo", ["adapt=foo"]),
    ("+trainer.max_epochs=3 (key exists)", ["+trainer.max_epochs=3"]),
    ("override without '=': trainer.max_epochs", ["trainer.max_epochs"]),
    ("unknown domain data.source=nosuch", ["data.source=nosuch"]),
    ("missing weights file", ["backbone.weights=/nonexistent/w.pt"]),
]:
    config_case(_name, *_overrides)


# ----------------------------------------------------------------------------- data files
@case("data files", "folder dataset: data.root does not exist")
def _missing_root(tmp: Path) -> Outcome:
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", f"data.source=folder:{tmp}/nope", "data.target=folder:/nope2")
    return with_store_counts(outcome, tmp / "mlflow.db")


def _write_folder(root: Path, per_class: int = 10, size: int = 24) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg", quality=90)
    return root


def _folder_run(tmp: Path, source: Path, target: Path, *extra: str) -> Outcome:
    overrides = [o for o in TINY if not o.startswith(("data=", "data.synthetic_size"))]
    outcome = tlbench(
        tmp,
        *overrides,
        "data=folder",
        f"data.source=folder:{source}",
        f"data.target=folder:{target}",
        "data.image_size=24",
        "data.num_workers=1",
        "data.augment=none",
        f"tracking.uri={store(tmp)}",
        *extra,
    )
    return with_store_counts(outcome, tmp / "mlflow.db")


@case("data files", "folder dataset: a file that is not an image")
def _not_an_image(tmp: Path) -> Outcome:
    source = _write_folder(tmp / "src")
    (source / "a" / "3.jpg").write_bytes(b"this is not a jpeg" * 10)
    return _folder_run(tmp, source, _write_folder(tmp / "tgt"))


@case("data files", "folder dataset: truncated JPEG (valid header), decoded by a worker")
def _truncated_jpeg(tmp: Path) -> Outcome:
    source = _write_folder(tmp / "src")
    victim = source / "b" / "7.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    outcome = _folder_run(tmp, source, _write_folder(tmp / "tgt"))
    if outcome.exit_code == 0:
        outcome.note = "trained: the truncated file was decoded (PIL fills the missing part) or not sampled"
    return outcome


@case("data files", "CIFAR batch file replaced by garbage")
def _cifar_garbage(tmp: Path) -> Outcome:
    base = _write_cifar(tmp / "data")
    (base / "data_batch_1").write_bytes(os.urandom(5000))
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "data.source=cifar10", "data.target=cifar10", f"data.root={tmp / 'data'}")
    return with_store_counts(outcome, tmp / "mlflow.db")


# ----------------------------------------------------------------------------- tracking
@case("tracking", "mlflow.db is garbage bytes")
def _garbage_store(tmp: Path) -> Outcome:
    (tmp / "mlflow.db").write_bytes(os.urandom(100_000))
    return tlbench(tmp, *TINY)


@case("tracking", "mlflow.db truncated to a third")
def _truncated_store(tmp: Path) -> Outcome:
    first = tlbench(tmp, *TINY, expect="works")
    db = tmp / "mlflow.db"
    if first.exit_code != 0:
        return Outcome(exit_code=first.exit_code, note="setup run failed", last_line=first.last_line)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 3)
    return tlbench(tmp, *TINY)


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    code = (
        "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\n"
    )
    holder = subprocess.Popen([PYTHON, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    return holder


@case("tracking", "another process holds the SQLite write lock for 30 s")
def _locked_store(tmp: Path) -> Outcome:
    first = tlbench(tmp, *TINY, expect="works")
    holder = _hold_lock(tmp / "mlflow.db", 30)
    try:
        outcome = tlbench(tmp, *TINY)
    finally:
        holder.kill()
        holder.wait()
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1 if first.exit_code == 0 else 0)


@case("tracking", "another process holds the SQLite write lock for 8 s (shorter than tracking.timeout_s)")
def _briefly_locked_store(tmp: Path) -> Outcome:
    first = tlbench(tmp, *TINY, expect="works")
    holder = _hold_lock(tmp / "mlflow.db", 8)
    try:
        outcome = tlbench(tmp, *TINY, expect="works")
    finally:
        holder.kill()
        holder.wait()
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=2 if first.exit_code == 0 else 1)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


@case("tracking", "read-only working directory")
def _read_only_cwd(tmp: Path) -> Outcome:
    folder = tmp / "ro"
    if not _mount_tmpfs(folder, "ro,size=1m"):
        folder.chmod(0o555)
        if os.geteuid() == 0:
            return Outcome(skipped="needs root with mount, or a non-root user")
    try:
        return tlbench(folder, *TINY)
    finally:
        _umount(folder)


@case("tracking", "read-only folder for mlflow.db (outputs elsewhere)")
def _read_only_store(tmp: Path) -> Outcome:
    folder = tmp / "ro"
    if not _mount_tmpfs(folder, "ro,size=1m"):
        return Outcome(skipped="needs root (read-only tmpfs)")
    try:
        return tlbench(tmp, *TINY, f"tracking.uri=sqlite:///{folder}/mlflow.db")
    finally:
        _umount(folder)


def _closed_port() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


class SilentServer:
    """Accepts every connection and never answers."""

    def __enter__(self) -> str:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.accepted: list[socket.socket] = []

        def accept() -> None:
            while True:
                try:
                    self.accepted.append(self.listener.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@case("tracking", "MLFLOW_TRACKING_URI at a closed port, skip_done=true")
def _closed_port_run(tmp: Path) -> Outcome:
    return tlbench(tmp, *TINY, "tracking.skip_done=true", "tracking.timeout_s=5", env={"MLFLOW_TRACKING_URI": _closed_port()})


@case("tracking", "server accepts but never answers, tracking.timeout_s=5")
def _silent_server_run(tmp: Path) -> Outcome:
    with SilentServer() as uri:
        return tlbench(tmp, *TINY, "tracking.skip_done=true", "tracking.timeout_s=5", f"tracking.uri={uri}")


@case("tracking", "tlbench report against a server that never answers")
def _silent_server_report(tmp: Path) -> Outcome:
    with SilentServer() as uri:
        return tlbench(tmp, "report", "--uri", uri, "--timeout", "5")


# ----------------------------------------------------------------------------- faults
def _interrupt(tmp: Path, sig: int, *, twice: bool = False) -> Outcome:
    process = Process([*LONG, f"tracking.uri={store(tmp)}", f"checkpoint_dir={tmp / 'ckpt'}"], tmp).start()
    if not process.wait_for("epoch 1/"):
        code, seconds = process.finish()
        return Outcome(exit_code=code, seconds=seconds, note="never reached epoch 1", last_line=(process.text_lines() or [""])[-1])
    sent = time.monotonic()
    os.killpg(process.popen.pid, sig) if sig == signal.SIGINT else process.popen.send_signal(sig)
    if twice:
        time.sleep(0.3)
        os.killpg(process.popen.pid, sig)
    code, _ = process.finish(120)
    after = process.text_lines(since=sent)
    outcome = Outcome(exit_code=code, lines=len(after), seconds=time.monotonic() - sent, expect="signal", last_line=after[-1] if after else "")
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)
    counts = runs_by_status(tmp / "mlflow.db")
    outcome.note = f"runs: {counts}"
    return outcome


@case("faults", "Ctrl-C (SIGINT to the process group) after epoch 1")
def _ctrl_c(tmp: Path) -> Outcome:
    return _interrupt(tmp, signal.SIGINT)


@case("faults", "double Ctrl-C")
def _double_ctrl_c(tmp: Path) -> Outcome:
    return _interrupt(tmp, signal.SIGINT, twice=True)


@case("faults", "SIGTERM after epoch 1")
def _sigterm(tmp: Path) -> Outcome:
    return _interrupt(tmp, signal.SIGTERM)


def _killed_run(tmp: Path) -> Optional[Path]:
    """A LONG run killed with -9 after its first epoch; returns its last.ckpt (None if it never got there)."""
    process = Process([*LONG, f"tracking.uri={store(tmp)}", f"checkpoint_dir={tmp / 'ckpt'}"], tmp).start()
    reached = process.wait_for("epoch 1/")
    time.sleep(0.5)
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.finish()
    found = sorted((tmp / "ckpt").glob("*/last.ckpt"))
    return found[0] if reached and found else None


@case("faults", "kill -9, then the same command again")
def _kill9_rerun(tmp: Path) -> Outcome:
    _killed_run(tmp)
    outcome = tlbench(tmp, *LONG, f"tracking.uri={store(tmp)}", f"checkpoint_dir={tmp / 'ckpt'}", expect="works")
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=2)
    outcome.note = f"runs: {runs_by_status(tmp / 'mlflow.db')}"
    return outcome


@case("faults", "kill -9, truncated last.ckpt, resume=true")
def _truncated_checkpoint(tmp: Path) -> Outcome:
    checkpoint = _killed_run(tmp)
    if checkpoint is None:
        return Outcome(note="setup: the run wrote no checkpoint before it was killed")
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    outcome = tlbench(tmp, *LONG, f"tracking.uri={store(tmp)}", f"checkpoint_dir={tmp / 'ckpt'}", "resume=true")
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)


@case("faults", "disk full while writing a checkpoint (150 kB tmpfs)")
def _disk_full(tmp: Path) -> Outcome:
    folder = tmp / "small"
    if not _mount_tmpfs(folder, "size=150k"):
        return Outcome(skipped="needs root (small tmpfs)")
    try:
        outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", f"checkpoint_dir={folder}")
        partial = [p for p in folder.rglob("*") if p.is_file()]
        outcome.note = f"files left in checkpoint_dir: {[p.name for p in partial]}; runs: {runs_by_status(tmp / 'mlflow.db')}"
        return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)
    finally:
        _umount(folder)


# ----------------------------------------------------------------------------- concurrency
@case("concurrency", "two grids (-m seed=0,1 & seed=2,3) start together on a new store")
def _two_grids(tmp: Path) -> Outcome:
    started = time.monotonic()
    processes = [Process(["-m", *TINY, f"tracking.uri={store(tmp)}", f"seed={seeds}"], tmp).start() for seeds in ("0,1", "2,3")]
    codes = [p.finish()[0] for p in processes]
    outcome = Outcome(exit_code=max(codes), seconds=time.monotonic() - started, expect="works", lines=sum(len(p.text_lines()) for p in processes))
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=4)
    outcome.note = f"exit codes {codes}; runs: {runs_by_status(tmp / 'mlflow.db')}"
    return outcome


@case("concurrency", "two `tlbench search` processes on one study (6 trials)")
def _two_searches(tmp: Path) -> Outcome:
    import optuna

    search = [
        "search",
        *[o for o in TINY],
        "backbone.width=4",
        f"tracking.uri={store(tmp)}",
        "--n-trials",
        "6",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--storage",
        f"sqlite:///{tmp / 'optuna.db'}",
        "--study-name",
        "shared",
        "--out-dir",
        str(tmp / "out"),
    ]
    started = time.monotonic()
    first = Process(search, tmp).start()
    time.sleep(1)
    second = Process(search, tmp).start()
    codes = [p.finish()[0] for p in (first, second)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp / 'optuna.db'}").get_trials()
    points = {tuple(sorted(t.params.items())) for t in trials if t.params}
    connection = sqlite3.connect(tmp / "mlflow.db")
    parents = connection.execute("select count(*) from tags where key = 'search.role' and value = 'parent'").fetchone()[0]
    connection.close()
    outcome = Outcome(exit_code=max(codes), seconds=time.monotonic() - started, expect="works", lines=sum(len(p.text_lines()) for p in (first, second)))
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=7)
    outcome.note = f"{len(trials)} trials, {len(points)} distinct points, {parents} MLflow parent run(s)"
    if len(points) != 6 or parents != 1:
        outcome.lost = max(outcome.lost, 6 - len(points))
        outcome.exit_code = outcome.exit_code or 1
    return outcome


@case("concurrency", "DDP on CPU: trainer.devices=2 strategy=ddp (gloo), one MLflow run expected")
def _ddp_two_processes(tmp: Path) -> Outcome:
    outcome = tlbench(tmp, *TINY, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"tracking.uri={store(tmp)}", expect="works")
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)
    counts = runs_by_status(tmp / "mlflow.db")
    outcome.note = f"runs: {counts}"
    if sum(counts.values()) != 1:  # one run per rank was the bug
        outcome.exit_code = outcome.exit_code or 1
    return outcome


# ----------------------------------------------------------------------------- round three (issue 30)
def _finished_run_id(db: Path) -> Optional[str]:
    connection = sqlite3.connect(db)
    row = connection.execute("select run_uuid from runs where status = 'FINISHED' order by start_time desc limit 1").fetchone()
    connection.close()
    return row[0] if row else None


@case("round three", "divergence: optim.lr=1e6, one epoch (a non-finite loss ends the run FAILED)")
def _divergence(tmp: Path) -> Outcome:
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "optim.lr=1e6", "optim.name=sgd")
    counts = runs_by_status(tmp / "mlflow.db")
    outcome.note = f"runs: {counts}"
    if counts.get("FINISHED"):
        outcome.lost = counts["FINISHED"]  # a diverged run recorded as a success is a result lost to noise
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)


@case("round three", "TLBENCH_CACHE is a file")
def _cache_is_a_file(tmp: Path) -> Outcome:
    (tmp / "cachefile").write_text("not a folder")
    return with_store_counts(tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", env={"TLBENCH_CACHE": str(tmp / "cachefile")}), tmp / "mlflow.db")


@case("round three", "tracking.uri=postgresql:// at a closed port, tracking.timeout_s=5")
def _postgres_closed_port(tmp: Path) -> Outcome:
    return tlbench(tmp, *TINY, "tracking.uri=postgresql://user:secret@127.0.0.1:9/db", "tracking.timeout_s=5")


@case("round three", "data=folder with one class")
def _one_class(tmp: Path) -> Outcome:
    source = _write_folder(tmp / "src")
    shutil.rmtree(source / "b")
    return _folder_run(tmp, source, _write_folder(tmp / "tgt"))


@case("round three", "checkpoint_dir under an unwritable system folder")
def _unwritable_checkpoints(tmp: Path) -> Outcome:
    return with_store_counts(tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "checkpoint_dir=/proc/tlbench/ckpt"), tmp / "mlflow.db")


@case("round three", "four identical sweeps -m seed=0,1 skip_done=true started together")
def _identical_sweeps(tmp: Path) -> Outcome:
    started = time.monotonic()
    args = ["-m", *TINY, f"tracking.uri={store(tmp)}", "seed=0,1", "tracking.skip_done=true"]
    processes = [Process(args, tmp).start() for _ in range(4)]
    codes = [p.finish()[0] for p in processes]
    counts = runs_by_status(tmp / "mlflow.db")
    connection = sqlite3.connect(tmp / "mlflow.db")
    trained = connection.execute(
        "select count(*) from runs where status = 'FINISHED' and lifecycle_stage = 'active' and run_uuid not in "
        "(select run_uuid from tags where key = 'tlbench.parent')"
    ).fetchone()[0]
    connection.close()
    outcome = Outcome(exit_code=max(codes), seconds=time.monotonic() - started, expect="works", lines=max(len(p.text_lines()) for p in processes))
    outcome = with_store_counts(outcome, tmp / "mlflow.db", expected_runs=2)
    outcome.note = f"exit codes {codes}; {trained} job run(s) trained for 2 configurations; runs by status: {counts}"
    if trained != 2:
        outcome.exit_code = outcome.exit_code or 1
    return outcome


@case("round three", "SHOT from a source model trained on the target's labels")
def _leaky_source_model(tmp: Path) -> Outcome:
    first = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "data.source=sklearn_digits", expect="works")
    run_id = _finished_run_id(tmp / "mlflow.db")
    if first.exit_code != 0 or run_id is None:
        return Outcome(exit_code=first.exit_code, note="setup run failed", last_line=first.last_line)
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "adapt=shot", "selection=last", f"adapt.source_model=runs:/{run_id}")
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)


@case("round three", "cached linear probe re-scored after its backbone weights file was replaced")
def _replaced_weights(tmp: Path) -> Outcome:
    import torch

    weights = tmp / "backbone.pt"
    code = (
        "import sys, torch\nfrom tlbench.backbones import BACKBONES\n"
        "torch.save(BACKBONES.build({'name': 'small_cnn', 'family': 'small_cnn'}).state_dict(), sys.argv[1])\n"
    )
    subprocess.run([PYTHON, "-c", code, str(weights)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "freeze=linear_probe", f"backbone.weights={weights}", expect="works")
    run_id = _finished_run_id(tmp / "mlflow.db")
    if first.exit_code != 0 or run_id is None:
        return Outcome(exit_code=first.exit_code, note="setup run failed", last_line=first.last_line)
    state = torch.load(weights)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
    outcome = tlbench(tmp, "eval", run_id, "--uri", store(tmp))
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)


# ----------------------------------------------------------------------------- security
class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _dump_like_cifar(value, path: Path) -> None:
    """Protocol 2 with numpy 1.x module names, as the official CIFAR files are written."""
    path.write_bytes(pickle.dumps(value, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def _write_cifar(root: Path, meta=None) -> Path:
    import numpy as np

    base = root / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "batch_label": name,
            "labels": [i % 10 for i in range(20)],
            "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            "filenames": [f"{i}.png" for i in range(20)],
        }
        _dump_like_cifar(batch, base / name)
    _dump_like_cifar(meta if meta is not None else {"label_names": [f"c{i}" for i in range(10)]}, base / "batches.meta")
    return base


@case("security", "crafted CIFAR batches.meta (pickle calling os.system)")
def _crafted_cifar(tmp: Path) -> Outcome:
    marker = tmp / "PWNED"
    _write_cifar(tmp / "data", meta=RunsCode(marker))
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "data.source=cifar10", "data.target=cifar10", f"data.root={tmp / 'data'}")
    outcome.code_ran = marker.exists()
    return with_store_counts(outcome, tmp / "mlflow.db")


@case("security", "crafted weights file (torch pickle calling os.system)")
def _crafted_weights(tmp: Path) -> Outcome:
    import torch

    marker = tmp / "PWNED"
    torch.save({"state_dict": RunsCode(marker)}, tmp / "evil.pt")
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", f"backbone.weights={tmp / 'evil.pt'}")
    outcome.code_ran = marker.exists()
    return with_store_counts(outcome, tmp / "mlflow.db")


@case("security", "crafted last.ckpt picked up by resume=true")
def _crafted_checkpoint(tmp: Path) -> Outcome:
    import torch

    checkpoint = _killed_run(tmp)
    if checkpoint is None:
        return Outcome(note="setup: the run wrote no checkpoint before it was killed")
    marker = tmp / "PWNED"
    torch.save({"state_dict": RunsCode(marker), "epoch": 1}, checkpoint)
    outcome = tlbench(tmp, *LONG, f"tracking.uri={store(tmp)}", f"checkpoint_dir={tmp / 'ckpt'}", "resume=true")
    outcome.code_ran = marker.exists()
    return with_store_counts(outcome, tmp / "mlflow.db", expected_runs=1)


@case("security", "_target_ injection: +adapt._target_=os.system")
def _target_injection(tmp: Path) -> Outcome:
    outcome = tlbench(tmp, *TINY, f"tracking.uri={store(tmp)}", "+adapt._target_=os.system", "+adapt._args_=[touch PWNED]")
    outcome.code_ran = (tmp / "PWNED").exists()
    return with_store_counts(outcome, tmp / "mlflow.db")


# ----------------------------------------------------------------------------- the table
def run_all(groups: Optional[set[str]]) -> list[tuple[Case, Outcome]]:
    results = []
    for item in CASES:
        if groups and item.group not in groups:
            continue
        with tempfile.TemporaryDirectory(prefix="tlbench-battery-") as tmp:
            try:
                outcome = item.run(Path(tmp))
            except Exception as exc:  # the battery itself failed on this case: say so in the table
                outcome = Outcome(note=f"battery error: {type(exc).__name__}: {exc}")
                outcome.exit_code = None
        mark = "skip" if outcome.skipped else ("ok" if outcome.met() else "MISSED")
        print(
            f"[{mark:6}] {item.group:11} {item.name}: exit {outcome.exit_code}, {outcome.lines} lines, "
            f"{outcome.seconds:.1f}s, RUNNING {outcome.running}, lost {outcome.lost}  {outcome.last_line[:160]}",
            flush=True,
        )
        results.append((item, outcome))
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_table(results: list[tuple[Case, Outcome]], path: Path) -> None:
    met = sum(o.met() and not o.skipped for _, o in results)
    skipped = sum(bool(o.skipped) for _, o in results)
    lines = [
        "# Reliability battery (issue 18)",
        "",
        "Regenerate: `nice -n 15 .venv/bin/python experiments/reliability/battery.py` (about 10 minutes on 2 cores).",
        "",
        f"Goal per case: ≤ {GOAL_LINES} lines within {GOAL_SECONDS:.0f} s for an error (for a signal: ≤ {GOAL_LINES} lines after it), "
        "0 runs lost, 0 runs left RUNNING, no code run from data. "
        f"**{met} of {len(results) - skipped} cases meet it**" + (f", {skipped} skipped (need root)." if skipped else "."),
        "",
        "Lines: non-empty stdout + stderr lines (for signal cases: printed after the signal). Seconds: until the process "
        "ended (signal cases: from the signal). RUNNING: runs left RUNNING in the case's MLflow store. Lost: runs that "
        "should have been recorded and are missing (search: points repeated). Expect: `error` = must fail, `works` = must "
        "succeed, `signal` = interrupted run.",
        "",
        "| group | case | expect | exit | lines | seconds | RUNNING | lost | code ran | goal | last line / note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for item, o in results:
        goal = "skipped: " + o.skipped if o.skipped else ("met" if o.met() else "**missed**")
        detail = "; ".join(x for x in (o.last_line[:220], o.note) if x)
        lines.append(
            f"| {item.group} | {_cell(item.name)} | {o.expect} | {o.exit_code} | {o.lines} | {o.seconds:.1f} | {o.running} | "
            f"{o.lost} | {'**yes**' if o.code_ran else 'no'} | {goal} | {_cell(detail)} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated groups: " + ", ".join(dict.fromkeys(c.group for c in CASES)))
    parser.add_argument("--out", default=str(REPO / "results" / "reliability.md"))
    args = parser.parse_args()
    groups = set(args.only.split(",")) if args.only else None
    results = run_all(groups)
    write_table(results, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
