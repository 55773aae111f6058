"""The MLflow parent run of a Hydra multirun (`tlbench -m ...`), on any launcher.

Each job's run is a child of it (`mlflow.parentRunId`); when the sweep ends it gets the counts, the
summary table and a plot, and closes FAILED if any job failed (KILLED on Ctrl-C). The first job to start
creates it, under a file lock in the sweep folder, so jobs in other processes (joblib workers, submitit
or cluster jobs sharing the folder and the store) find the same parent, and a sweep whose first job
cannot even be composed creates no run at all. Progress is counted from job markers and the store, so it
is right whichever process finishes a job and in whatever order.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from .tracking import PROCESS_TAG, client_for, experiment_id, resolve_uri, standard_tags

#: Tag of runs that hold children rather than results: "sweep" or "search". Reports leave them out.
PARENT_TAG = "tlbench.parent"
#: The sweep directory a parent run stands for (its children carry the plain `sweep_dir` tag).
SWEEP_DIR_TAG = "tlbench.sweep_dir"
#: The parent run id, once this process knows it (inherited by workers a launcher starts later).
ENV_PARENT = "TLBENCH_SWEEP_RUN_ID"
#: What the sweep is (its overrides and job count), written by the launching process for the first job.
SWEEP_FILE = ".tlbench_sweep.json"
#: The parent run id, written by the job that created it.
PARENT_FILE = ".tlbench_parent_run"
#: Written into a job's output folder when the job ends, recorded run or not (e.g. a config error).
DONE_MARKER = ".tlbench_job_done"
#: Written beside it when the job failed, with its one-line error.
FAILED_MARKER = ".tlbench_job_failed"
#: Tag prefix on a FINISHED run that a `tracking.skip_done` sweep reused instead of training again:
#: `tlbench.reused_by.<parent run id>` = the sweep folder. The sweep counts it as done, not failed, and
#: its tables include it.
REUSED_TAG_PREFIX = "tlbench.reused_by."
#: (uri, experiment, sweep dir) of the sweep this process launched, to close its parent on Ctrl-C.
_launched: tuple[str, str, str] | None = None
#: Jobs of the last sweep of this process that failed or recorded no run; the CLI exits 1 when > 0.
failed_jobs = 0


def sweep_name(overrides: list[str], jobs: int | None) -> str:
    """`sweep · adapt=source_only,dann seed=0,1 · 4 runs`: what the sweep varies, readable when cut short."""
    varying = [o for o in overrides if "," in o or "(" in o] or overrides
    count = f" · {jobs} runs" if jobs else ""
    return f"sweep · {' '.join(varying)[:80]}{count}"


def plan_sweep(uri: str, experiment: str, sweep_dir: str, overrides: list[str], jobs: int | None, swept: list[str] = ()) -> None:
    """At multirun start, in the launching process: note what the sweep is (its overrides, job count and
    the keys it varies) in its folder. Touches no store."""
    global _launched, failed_jobs
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    from .processes import this_process

    # the launching process owns the parent: when it is gone, a later command closes a parent left RUNNING
    Path(sweep_dir, SWEEP_FILE).write_text(json.dumps({"overrides": overrides, "jobs": jobs, "swept": list(swept), "owner": this_process()}))
    os.environ.pop(ENV_PARENT, None)
    _launched, failed_jobs = (uri, experiment, sweep_dir), 0


def swept_values(sweep_dir: str, job_overrides: list[str]) -> list[tuple[str, str]]:
    """(key, value) of each key the sweep in `sweep_dir` varies, as this job's overrides set it."""
    plan_file = Path(sweep_dir, SWEEP_FILE)
    swept = json.loads(plan_file.read_text()).get("swept", []) if plan_file.exists() else []
    given = dict(o.lstrip("+~").split("=", 1) for o in job_overrides if "=" in o)
    return [(key, given[key]) for key in swept if key in given]


def find_parent(sweep_dir: str) -> str | None:
    """The parent run id of the sweep in `sweep_dir`; None before its first job started."""
    path = Path(sweep_dir, PARENT_FILE)
    return path.read_text().strip() if path.exists() else None


def ensure_parent(uri: str, experiment: str, timeout_s: float, sweep_dir: str) -> str:
    """The sweep's parent run id, created by whichever job asks first (a file lock in the sweep folder
    serialises the jobs of local launchers, and of cluster jobs on a shared file system)."""
    if os.environ.get(ENV_PARENT):
        return os.environ[ENV_PARENT]
    from filelock import FileLock

    from .console import quiet_libraries

    quiet_libraries()  # before the first MLflow call, which may create the store and log about it
    with FileLock(str(Path(sweep_dir, PARENT_FILE + ".lock"))):
        run_id = find_parent(sweep_dir)
        if run_id is None:
            run_id = _create_parent(uri, experiment, timeout_s, sweep_dir)
            Path(sweep_dir, PARENT_FILE).write_text(run_id)
    os.environ[ENV_PARENT] = run_id
    return run_id


def _create_parent(uri: str, experiment: str, timeout_s: float, sweep_dir: str) -> str:
    plan_file = Path(sweep_dir, SWEEP_FILE)
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {"overrides": [], "jobs": None}
    client = client_for(uri, timeout_s)
    tags = {**standard_tags(), PARENT_TAG: "sweep", SWEEP_DIR_TAG: sweep_dir, **({PROCESS_TAG: plan["owner"]} if plan.get("owner") else {})}
    run = client.create_run(experiment_id(client, experiment), run_name=sweep_name(plan["overrides"], plan["jobs"]), tags=tags)
    run_id = run.info.run_id
    client.log_param(run_id, "sweep.overrides", shlex.join(plan["overrides"])[:6000])
    client.log_param(run_id, "sweep.dir", sweep_dir)
    if plan["jobs"]:
        client.log_param(run_id, "sweep.jobs", plan["jobs"])
    print(f"[tlbench] sweep: MLflow parent run {run_id} in experiment '{experiment}'", flush=True)
    return run_id


def reused_filter(parent_id: str) -> str:
    return f"tags.`{REUSED_TAG_PREFIX}{parent_id}` != ''"


def mark_reused(uri: str, run_id: str, parent_id: str, sweep_dir: str) -> None:
    """Tag a finished run that this sweep's job skipped (skip_done) as part of the sweep."""
    client_for(uri).set_tag(run_id, REUSED_TAG_PREFIX + parent_id, sweep_dir)


def sweep_runs_filter(parent_id: str | None, sweep_dir: str) -> tuple[str, ...]:
    """The runs of a sweep (load_runs union): its jobs' runs and the finished runs it reused."""
    return (f"tags.sweep_dir = '{sweep_dir}'",) + ((reused_filter(parent_id),) if parent_id else ())


def reused_count(uri: str, parent_id: str) -> int:
    client = client_for(uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    return len(client.search_runs([experiment_id], reused_filter(parent_id), max_results=5000))


def child_statuses(uri: str, parent_id: str) -> dict[str, int]:
    """Status → number of the parent's child runs (RUNNING ones included)."""
    client = client_for(uri)
    parent = client.get_run(parent_id)
    counts: dict[str, int] = {}
    for run in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000):
        counts[run.info.status] = counts.get(run.info.status, 0) + 1
    return counts


def mark_job_done(job_output_dir: str) -> None:
    Path(job_output_dir, DONE_MARKER).touch()


def mark_job_failed(job_output_dir: str, message: str) -> None:
    """Written by a job that failed with a one-line error: the sweep's end counts it even when the store
    that should have recorded the failure is unreachable."""
    try:
        Path(job_output_dir).mkdir(parents=True, exist_ok=True)
        Path(job_output_dir, FAILED_MARKER).write_text(message)
    except OSError:  # e.g. the full disk that made the job fail: the store still counts it if reachable
        pass


def failed_job_count(sweep_dir: str) -> int:
    return len(list(Path(sweep_dir).glob(f"*/{FAILED_MARKER}")))


def progress_line(uri: str, parent_id: str, sweep_dir: str) -> str:
    """`sweep: 3/8 run(s) done (1 failed) in 42s (14s per run, ETA 70s)`. Jobs done are counted from
    their folders' markers (a job that failed before creating a run counts too), failures from the store."""
    client = client_for(uri)
    parent = client.get_run(parent_id)
    total = int(parent.data.params.get("sweep.jobs", 0)) or None
    done = len(list(Path(sweep_dir).glob(f"*/{DONE_MARKER}")))
    counts = child_statuses(uri, parent_id)
    reused = reused_count(uri, parent_id)
    recorded = sum(n for status, n in counts.items() if status != "RUNNING")
    failed = counts.get("FAILED", 0) + counts.get("KILLED", 0) + max(done - recorded - reused, 0)
    elapsed = time.time() - parent.info.start_time / 1000
    per_run = elapsed / max(done, 1)
    of = f"/{total}" if total else ""
    eta = f", ETA {per_run * max(total - done, 0):.0f}s" if total else ""
    failures = f" ({failed} failed)" if failed else ""
    failures += f" ({reused} already finished, reused)" if reused else ""
    return f"sweep: {done}{of} run(s) done{failures} in {elapsed:.0f}s ({per_run:.0f}s per run{eta})"


def close_sweep_run(uri: str, parent_id: str, summary: str, runs: Any, expected: int | None) -> int:
    """Record counts, the summary table and a plot on the parent and close it. Returns the number of jobs
    that failed: FAILED/KILLED children plus jobs that never recorded a run (e.g. a worker that died)."""
    global _launched
    client = client_for(uri)
    counts = child_statuses(uri, parent_id)
    reused = reused_count(uri, parent_id)
    recorded = sum(counts.values())
    missing = max((expected or 0) - recorded - reused, 0)
    failed = counts.get("FAILED", 0) + counts.get("KILLED", 0) + missing
    for name, value in {"runs_finished": counts.get("FINISHED", 0), "runs_reused": reused, "runs_failed": failed, "runs_missing": missing}.items():
        client.log_metric(parent_id, name, value)
    client.log_text(parent_id, summary, "sweep_summary.md")
    plot = _accuracy_plot(runs)
    if plot is not None:
        import matplotlib.pyplot as plt

        client.log_figure(parent_id, plot, "sweep_accuracy.png")
        plt.close(plot)
    if _live_children(client, parent_id):  # identical sweeps started together share this parent: the last one closes it
        print(f"[tlbench] sweep: parent run {parent_id} stays open while another process's jobs of it run", flush=True)
    else:
        client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    os.environ.pop(ENV_PARENT, None)
    _launched = None
    return failed


def _live_children(client, parent: str) -> int:
    """How many of the parent's child runs are RUNNING in a process that is still alive (or on another host)."""
    from .processes import PROCESS_TAG, process_state

    experiment = client.get_run(parent).info.experiment_id
    running = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'")
    return sum(process_state(r.data.tags.get(PROCESS_TAG, "")) != "gone" for r in running)


def failure_lines(runs: Any, expected: int | None) -> list[str]:
    """One line per failed or killed job (name: reason), and one for jobs that recorded no run at all."""
    lines = []
    if runs is not None and len(runs):
        for _, run in runs[runs["status"].isin(["FAILED", "KILLED"])].iterrows():
            reason = run.get("tags.failure_reason")
            lines.append(f"{run['status'].lower()}: {run['run_name']}" + (f" ({reason})" if isinstance(reason, str) else ""))
    missing = max((expected or 0) - (len(runs) if runs is not None else 0), 0)
    if missing:
        lines.append(f"{missing} job(s) recorded no run (their errors are above and in the job logs)")
    return lines


def close_interrupted_sweep(status: str = "KILLED", close_dead_children: bool = False) -> None:
    """Close the parent of the sweep this process launched if it is still open (Ctrl-C, a crash); with
    `close_dead_children`, also its runs whose worker process is gone (waiting a little for workers that
    are being shut down)."""
    global _launched
    if _launched is None:
        return
    uri, experiment, sweep_dir = _launched
    _launched = None
    os.environ.pop(ENV_PARENT, None)
    parent = find_parent(sweep_dir)
    if parent is None:  # no job started: no run, no store to touch
        return
    try:
        client = client_for(uri)
        if close_dead_children:
            _close_dead_children(client, parent)
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, status)
    except Exception:  # the store is gone too: nothing more to record
        pass


def _close_dead_children(client, parent: str, wait_s: float = 10.0) -> None:
    from .tracking import close_dead_runs

    experiment = client.get_run(parent).info.experiment_id
    deadline = time.time() + wait_s
    while True:
        close_dead_runs(client, experiment)
        running = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'")
        if not running or time.time() > deadline:
            return
        time.sleep(0.5)


def _accuracy_plot(runs: Any):
    """Horizontal bars of each child's test target accuracy, named by run; None without results."""
    column = "metrics.test/target_acc"
    if runs is None or len(runs) == 0 or column not in runs.columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = runs[runs[column].notna()]
    if done.empty:
        return None
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(done) + 1))
    axes.barh(list(done["run_name"]), list(done[column] * 100))
    axes.set_xlabel("test target accuracy (%), checkpoint chosen by the run's selection rule")
    axes.invert_yaxis()
    figure.tight_layout()
    return figure


def sweep_dir_of(config: Any) -> str:
    return str(Path(config.hydra.sweep.dir).resolve())


def tracking_of(config: Any) -> tuple[str, str, float]:
    return resolve_uri(config.tracking.uri), str(config.tracking.experiment), float(config.tracking.timeout_s)
