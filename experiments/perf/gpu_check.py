"""GPU check: the accelerator paths no CPU machine exercises, ready for the few minutes a GPU is lent.

    .venv/bin/python experiments/perf/gpu_check.py [--compile] [--out results/gpu_check.md]   # CUDA machine, ≤ 5 min on one GPU
    .venv/bin/python experiments/perf/gpu_check.py --dry-run                                # the same checks on CPU, tiny

It verifies that (1) `trainer=gpu` trains and records one FINISHED run, (2) DDP on every visible device
records exactly one run, (3) bf16-mixed autocast and channels_last train with finite losses, (4) with
--compile, `torch.compile` gives the eager loss curve within a tolerance; and it prints images/s of
ResNet-50 fine-tuning at 224 px on synthetic tensors (no download) for each option. The dry run (CPU,
ResNet-18 at 64 px, the digits task) is part of the test suite, so the script cannot rot between loans.
Needs only the README's install.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A seconds-long tlbench run on the embedded digits task.
TINY_RUN = [
    "backbone=small_cnn",
    "data=digits",
    "data.synthetic_size=400",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.enable_progress_bar=false",
    "tracking.plots=false",
]


def recorded_runs(folder: Path, overrides: list[str]) -> tuple[int, list[str], str]:
    """Run `tlbench` with `overrides` into a fresh SQLite store; its exit code, run statuses and stderr tail."""
    store = folder / "mlflow.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlbench",
            *TINY_RUN,
            *overrides,
            f"tracking.uri=sqlite:///{store}",
            f"checkpoint_dir={folder / 'ckpt'}",
            f"hydra.run.dir={folder / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    statuses = []
    if store.exists():
        connection = sqlite3.connect(store)
        statuses = [row[0] for row in connection.execute("select status from runs")]
        connection.close()
    return result.returncode, statuses, result.stderr[-1500:]


def throughput(option: str, device, dry_run: bool, steps: int, compile_model: bool = False) -> tuple[float, list[float]]:
    """Images/s of fine-tuning (forward, backward, SGD step) on synthetic tensors, and the losses."""
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(0)
    model = (torchvision.models.resnet18 if dry_run else torchvision.models.resnet50)(weights=None, num_classes=10).to(device)
    size, batch = (64, 8) if dry_run else (224, 64)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    if "channels_last" in option:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if "bf16" in option else None
    losses = []
    started = None
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps (cuDNN autotuning, compilation) are not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(step_model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started), losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny: check the script itself")
    parser.add_argument("--compile", action="store_true", help="also check torch.compile against eager")
    parser.add_argument("--out", help="write the report here (Markdown)")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    accelerator = ["trainer.accelerator=cpu", "trainer.precision=bf16-mixed"] if args.dry_run else ["trainer=gpu"]
    parallel = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"] if args.dry_run else ["trainer=ddp"]
    lines, failed = [], 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failed
        failed += not ok
        lines.append(f"| {name} | {'ok' if ok else 'FAILED'} | {detail} |")

    with tempfile.TemporaryDirectory() as folder:
        code, statuses, tail = recorded_runs(Path(folder) / "single", accelerator)
        check(
            "one run on the accelerator" + (" (bf16-mixed)" if args.dry_run else " (trainer=gpu, bf16-mixed)"),
            code == 0 and statuses == ["FINISHED"],
            f"exit {code}, runs {statuses}" + ("" if code == 0 else f": {tail.splitlines()[-1:]}"),
        )
        code, statuses, tail = recorded_runs(Path(folder) / "ddp", parallel)
        devices = 2 if args.dry_run else torch.cuda.device_count()
        check(
            f"DDP on {devices} device(s) records one run",
            code == 0 and statuses == ["FINISHED"],
            f"exit {code}, runs {statuses}" + ("" if code == 0 else f": {tail.splitlines()[-1:]}"),
        )
    steps = 3 if args.dry_run else 20
    model_name = "ResNet-18 at 64 px (dry run)" if args.dry_run else "ResNet-50 at 224 px"
    eager = None
    for option in ("fp32", "bf16-mixed", "channels_last", "bf16-mixed + channels_last"):
        rate, losses = throughput(option, device, args.dry_run, steps)
        eager = losses if option == "fp32" else eager
        check(f"{model_name}, {option}", all(v == v and abs(v) < 1e6 for v in losses), f"{rate:.1f} images/s")  # finite
    if args.compile:
        rate, losses = throughput("fp32", device, args.dry_run, steps, compile_model=True)
        close = all(abs(a - b) <= 1e-2 * max(1.0, abs(b)) for a, b in zip(losses, eager))
        check(f"{model_name}, torch.compile vs eager losses", close, f"{rate:.1f} images/s; max |Δloss| {max(abs(a - b) for a, b in zip(losses, eager)):.2e}")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run)"
    report = (
        "\n".join(
            [f"GPU check on {name}, torch {torch.__version__} (`experiments/perf/gpu_check.py`).", "", "| check | result | detail |", "|:--|:--|:--|", *lines]
        )
        + "\n"
    )
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
