"""A sick tracking server costs at most tracking.timeout_s per call: a closed port or a server that
accepts connections but never answers ends `tlbench` (with skip_done, whose query comes first) and
`tlbench report` with one line naming the server and a non-zero exit, within seconds, not minutes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import TINY

from tlbench import tracking
from tlbench.tracking import TrackingError, client_for

#: Real processes and servers: part of every CI run; `pytest -m 'not slow'` skips them locally.
pytestmark = pytest.mark.slow

TIMEOUT_S = 2
#: Interpreter start and imports (torch, Lightning, MLflow) on a busy two-core machine.
STARTUP_S = 20


@pytest.fixture
def closed_port() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens here now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_server():
    """A real listening socket that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # listener closed: the test is over
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


def run_command(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "tlbench", *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    return result, time.time() - started


def assert_one_line_naming(result: subprocess.CompletedProcess, uri: str, prefix: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix) and uri in lines[0], lines[0]


@pytest.mark.parametrize("server", ["closed_port", "silent_server"])
def test_skip_done_against_a_sick_server_is_one_line_within_the_timeout(tmp_path, server, request):
    uri = request.getfixturevalue(server)
    result, seconds = run_command(
        [*TINY, f"tracking.uri={uri}", "tracking.skip_done=true", f"tracking.timeout_s={TIMEOUT_S}", f"hydra.run.dir={tmp_path}/run"], tmp_path
    )
    assert_one_line_naming(result, uri, "tlbench: error: tracking.uri:")
    assert seconds < TIMEOUT_S + STARTUP_S


@pytest.mark.parametrize("server", ["closed_port", "silent_server"])
def test_report_against_a_sick_server_is_one_line_within_the_timeout(tmp_path, server, request):
    uri = request.getfixturevalue(server)
    result, seconds = run_command(["report", "--uri", uri, "--timeout", str(TIMEOUT_S)], tmp_path)
    assert_one_line_naming(result, uri, "tlbench report: error: tracking.uri:")
    assert seconds < TIMEOUT_S + STARTUP_S


def test_every_client_call_is_bounded_not_only_the_first(silent_server, monkeypatch):
    """The bound is on each call of the client, so a server that goes silent mid-run cannot hang it."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(name, "0")  # so that the test's own bound set below is undone afterwards
    monkeypatch.setattr(tracking, "_timeout_s", tracking._timeout_s)
    client = client_for(silent_server, timeout_s=1)
    for call in (lambda: client.get_experiment_by_name("tlbench"), lambda: client.set_terminated("0" * 32, "FINISHED")):
        started = time.time()
        with pytest.raises(TrackingError, match=re.escape(silent_server)):
            call()
        assert time.time() - started < 3


def test_a_sweep_whose_store_is_unreachable_exits_non_zero_with_one_line_per_job(tmp_path, closed_port):
    """Every job fails in one line; the sweep's end cannot read the store, says so once, counts the jobs'
    own failure markers and exits 1 (it exited 0 with Hydra callback warnings)."""
    uri = closed_port
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", "-m", *TINY, f"tracking.uri={uri}", "tracking.timeout_s=3", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Callback" not in result.stderr and "Traceback" not in result.stderr
    assert "2 of 2 job(s) failed" in result.stderr and "tracking.skip_done=true" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("tlbench: error: tracking.uri: cannot reach")]) == 2
