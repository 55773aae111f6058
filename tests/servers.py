"""Real servers for scale-out tests: a throwaway PostgreSQL cluster (Debian's binaries, initdb + pg_ctl in
a temp dir, 127.0.0.1 only) and an `mlflow server` on it with proxied artifacts in a local folder.

The commands are read from docs/scale-out.md (section 2) and run as written there, with the substitutions
that doc states: a temporary folder for `pgdata` and `pg.log`, free ports for 5432 and 5000, a temporary
folder for `/srv/mlflow-artifacts`, and `-k <folder> -c fsync=off -c max_connections=200` added to pg_ctl's
`-o`. PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user that
Debian's package creates (the doc's `runuser -u postgres --` prefix).
"""

from __future__ import annotations

import glob
import os
import shlex
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

DOC = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"
#: What the tests put in place of the doc's example values (docs/scale-out.md says so).
PG_PORT, SERVER_PORT, PGDATA, PGLOG, ARTIFACTS = "5432", "5000", "pgdata", "pg.log", "/srv/mlflow-artifacts"
TEST_ONLY_PG_OPTIONS = "-k {folder} -c fsync=off -c max_connections=200"


def doc_block(section: str, language: str = "bash") -> str:
    """The first `language` code block of a section of docs/scale-out.md."""
    return DOC.read_text().split(f"## {section}.", 1)[1].split(f"```{language}", 1)[1].split("```", 1)[0]


def doc_command_list(section: str) -> list[list[str]]:
    """Every command of a section's first bash block, in order: continuation lines joined, comments and
    exports left out."""
    lines = doc_block(section).replace("\\\n", " ").splitlines()
    return [
        words for words in (shlex.split(line, comments=True) for line in lines) if words and words[0] in ("initdb", "pg_ctl", "createdb", "mlflow", "tlbench")
    ]


def doc_commands(section: str = "2") -> dict[str, list[str]]:
    """The commands of a section (its first bash block) by program (`initdb`, `pg_ctl`, `createdb`,
    `mlflow`; `tlbench` for the first tlbench command)."""
    commands: dict[str, list[str]] = {}
    for words in doc_command_list(section):
        commands.setdefault(words[0], words)
    return commands


def with_option(words: list[str], option: str, value: str) -> list[str]:
    """`words` with the value after `option` replaced."""
    out = list(words)
    out[out.index(option) + 1] = value
    return out


def substituted(words: list[str], values: dict[str, str]) -> list[str]:
    """`words` with each example value replaced wherever it occurs (ports inside URLs too)."""
    out = []
    for word in words:
        for old, new in values.items():
            word = word.replace(old, new)
        out.append(word)
    return out


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
        """The doc's `createdb` with this cluster's port and `name` for the doc's database."""
        words = substituted(doc_commands()["createdb"], {PG_PORT: str(self.port)})
        subprocess.run([str(postgres_bin() / "createdb"), *words[1:-1], name], check=True, capture_output=True, timeout=60)
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
    values = {PGDATA: str(folder / "data"), PGLOG: str(folder / "log"), PG_PORT: str(cluster.port)}
    commands = doc_commands()
    initdb = substituted(commands["initdb"], values)
    subprocess.run(_as_db_user([str(binaries / "initdb"), *initdb[1:]]), check=True, capture_output=True, timeout=120)
    pg_ctl = substituted(commands["pg_ctl"], values)
    options = pg_ctl.index("-o") + 1
    pg_ctl[options] += " " + TEST_ONLY_PG_OPTIONS.format(folder=folder)
    subprocess.run(_as_db_user([str(binaries / "pg_ctl"), *pg_ctl[1:]]), check=True, capture_output=True, timeout=120)
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


def start_mlflow_server(cluster: PostgresCluster, artifacts: Path, log: Path, timeout_s: float = 120) -> MlflowServer:
    """The doc's `mlflow server` with proxied artifacts (clients upload through the server into
    `artifacts`), on the doc's database of `cluster`, which must exist (cluster.create_database)."""
    port = free_port()
    words = substituted(doc_commands()["mlflow"], {PG_PORT: str(cluster.port), SERVER_PORT: str(port), ARTIFACTS: str(artifacts)})
    command = [sys.executable, "-m", *words]
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
