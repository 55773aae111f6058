"""Real servers for scale-out tests: a throwaway PostgreSQL cluster (Debian's binaries, initdb + pg_ctl in
a temp dir, 127.0.0.1 only) and an `mlflow server` on it with proxied artifacts in a local folder.

docs/scale-out.md shows the same commands a user runs. PostgreSQL refuses to run as root, so as root the
cluster runs as the `postgres` system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """Folder of Debian's PostgreSQL server binaries (initdb, pg_ctl), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]), reverse=True)
    return Path(found[0]).parent if found else None


def why_no_postgres() -> str | None:
    """None when a throwaway cluster can be started here, else the reason (for pytest's skip)."""
    if postgres_bin() is None:
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot start as root"
    return None


def _as_db_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresCluster:
    folder: Path
    port: int
    user: str = "tlbench"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name], check=True, capture_output=True, timeout=60
        )
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_db_user([str(postgres_bin() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"]), capture_output=True, timeout=60
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresCluster:
    """initdb (trust auth, user tlbench) and pg_ctl start on a free port, listening on 127.0.0.1 only, in
    a fresh folder under the system temp dir (pytest's own are private to root, closed to `postgres`)."""
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="tlbench-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = PostgresCluster(folder, free_port())
    data = folder / "data"
    subprocess.run(
        _as_db_user([str(binaries / "initdb"), "-D", str(data), "-U", cluster.user, "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True, timeout=120
    )
    options = f"-h 127.0.0.1 -p {cluster.port} -k {folder} -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_db_user([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return cluster


@dataclass
class MlflowServer:
    process: subprocess.Popen
    port: int
    artifacts: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """The server and the worker processes it starts (uvicorn, a job consumer): its whole session."""
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def start_mlflow_server(backend_store_uri: str, artifacts: Path, log: Path, timeout_s: float = 120) -> MlflowServer:
    """`mlflow server` with proxied artifacts (clients upload through the server into `artifacts`)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(process, port, artifacts)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer within {timeout_s:.0f} s: {log.read_text()[-2000:]}")
