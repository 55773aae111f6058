"""Where the time of a small cached-feature sweep goes: cProfile of one `tlbench -m` process (4 linear
probes on cached EfficientNet-Lite0 features, embedded digits), split by stage. Writes
results/perf_profile.md. cProfile slows Python-heavy stages more than torch kernels: read the shares,
not the absolute seconds.

    .venv/bin/python experiments/perf/profile_sweep.py
"""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = [
    "backbone=efficientnet_lite0",
    "freeze=linear_probe",
    "data=digits",
    "data.synthetic_size=1000",
    "trainer.max_epochs=5",
    "trainer.enable_progress_bar=false",
    "optim.lr=0.1,0.03,0.01,0.003",
]
#: Stage → (file suffix, function) whose cumulative time stands for it; "~" marks a built-in.
STAGES = {
    "whole process": ("cli.py", "main"),
    "Hydra composes the jobs (launcher)": ("config_loader_impl.py", "load_sweep_config"),
    "config validation": ("config.py", "validate"),
    "datamodule build": ("datamodule.py", "__init__"),
    "backbone build + weight load": ("registry.py", "build"),
    "feature extraction or cache load": ("feature_cache.py", "featurize_domain"),
    "MLflow client and store checks": ("tracking.py", "client_for"),
    "Lightning fit (training + per-epoch evaluation)": ("trainer.py", "fit"),
    "Lightning test": ("trainer.py", "test"),
    "run artifacts (plots, .hydra folder)": ("run_artifacts.py", "log_run_artifacts"),
    "gc.collect after each run": ("~", "<built-in method gc.collect>"),
    "end-of-sweep table and parent run": ("hydra_callbacks.py", "on_multirun_end"),
    "train(), all of one run": ("train.py", "train"),
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tlbench-profile-"))
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(work / "prof.out"), "-m", "tlbench", "-m", *SWEEP, "tracking.log_model=false"],
        cwd=work,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    stats = pstats.Stats(str(work / "prof.out")).stats
    lines = [
        "# Profile of a small cached-feature sweep",
        "",
        "Command: `.venv/bin/python experiments/perf/profile_sweep.py` (this file was written by it).",
        "",
        f"One process: `tlbench -m {' '.join(SWEEP)} tracking.log_model=false` (4 runs, one intra-op thread,",
        "2-core CPU machine) under cProfile. Cumulative seconds per stage; stages nest (train() holds fit, test,",
        "artifacts and gc), so rows do not add up. cProfile inflates Python-heavy stages.",
        "",
        "| stage | calls | cumulative s |",
        "|---|---:|---:|",
    ]
    for label, (suffix, function) in STAGES.items():
        found = [
            (nc, ct) for (path, _, name), (_, nc, _, ct, _) in stats.items() if name == function and (path.endswith(suffix) or (suffix == "~" and path == "~"))
        ]
        calls, seconds = max(found, key=lambda item: item[1]) if found else (0, 0.0)
        lines.append(f"| {label} | {calls} | {seconds:.2f} |")
    out = REPO / "results" / "perf_profile.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
