"""Run the `tlbench` command in this process, exactly as the console script does, with timers around each
run's train(), Trainer.fit and Trainer.test, and the process's RSS after every run. Used by
experiments/perf/benchmark.py to split a sweep's wall time into training and per-run overhead.

    python experiments/perf/timed_tlbench.py TIMINGS.json <tlbench arguments...>
"""

from __future__ import annotations

import json
import sys
import time

STARTED = time.perf_counter()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def main() -> None:
    out, sys.argv = sys.argv[1], ["tlbench", *sys.argv[2:]]
    import pytorch_lightning as pl

    import tlbench.train as train_module
    from tlbench import cli

    imported = time.perf_counter() - STARTED
    runs: list[dict] = []
    current: dict = {}

    def timed(function, key):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                current[key] = current.get(key, 0.0) + time.perf_counter() - started

        return wrapper

    pl.Trainer.fit = timed(pl.Trainer.fit, "fit_s")
    pl.Trainer.test = timed(pl.Trainer.test, "test_s")
    original_train = train_module.train

    def train(*args, **kwargs):
        current.clear()
        started = time.perf_counter()
        try:
            return original_train(*args, **kwargs)
        finally:
            runs.append({**current, "train_s": time.perf_counter() - started, "rss_mb": rss_mb()})

    train_module.train = train
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        with open(out, "w") as handle:
            json.dump({"imports_s": imported, "wall_s": time.perf_counter() - STARTED, "runs": runs}, handle)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
