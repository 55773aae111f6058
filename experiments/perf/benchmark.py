"""Performance benchmarks (issue: frozen-feature caching and a lean training step). Writes results/perf.md.

    .venv/bin/python experiments/perf/benchmark.py [--repeats 3] [--quick]

1. Linear-probe sweep (8 configs × 10 epochs, EfficientNet-Lite0 ImageNet on digits): cached vs
   uncached wall time and accuracy.
2. Training throughput of TransferModule under the Lightning Trainer vs a plain PyTorch loop on the same
   model, data and batch size.
3. Share of training-step time spent waiting for data (Lightning, small_cnn on digits).
4. Scaling: time per epoch at 1k, 10k and 60k Fashion-MNIST images, with peak memory (one subprocess each).
Ratios are measured side by side in one invocation; timings are medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def compose_run(overrides: list[str], tmp: Path):
    from tlbench.cli import compose  # the same composition the CLI uses
    from tlbench.config import validate

    run = validate(compose(overrides + [f"tracking.uri=sqlite:///{tmp / 'perf.db'}", "tracking.experiment=perf",
                                         "trainer.enable_progress_bar=false"]))
    run.output_dir = str(tmp / "out")
    run.checkpoint_dir = str(tmp / "ckpt")
    return run


def linear_probe_sweep(tmp: Path, cached: bool, quick: bool) -> tuple[float, list[float]]:
    """Wall time and target accuracies of 8 linear-probe configs (4 learning rates × 2 heads)."""
    from tlbench.train import train

    epochs = 2 if quick else 10
    configs = [[f"optim.lr={lr}", f"head.hidden={hidden}"] for lr in (3e-4, 1e-3, 3e-3, 1e-2) for hidden in ("[]", "[128]")]
    started = time.perf_counter()
    accuracies = []
    for overrides in configs[: 2 if quick else 8]:
        run = compose_run(["freeze=linear_probe", "data=digits", "data.synthetic_size=1000", f"trainer.max_epochs={epochs}",
                           f"trainer.feature_cache={str(cached).lower()}", *overrides], tmp)
        accuracies.append(train(run)["test/target_acc"])
    return time.perf_counter() - started, accuracies


def lightning_vs_plain(tmp: Path, steps: int) -> tuple[float, float]:
    """Images/s of the same model, data and batch size: Trainer.fit vs a hand-written loop."""
    import pytorch_lightning as pl
    import torch.nn.functional as F

    from tlbench.data.datamodule import DomainDataModule
    from tlbench.train import build_module

    run = compose_run(["backbone=efficientnet_lite0", "data=digits", f"data.synthetic_size={600 if steps < 20 else 3000}", "trainer.feature_cache=false"], tmp)
    datamodule = DomainDataModule(run.data, run.seed)
    batch = run.data.batch_size

    module, datamodule, _ = build_module(run, datamodule)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    lightning = steps * batch / (time.perf_counter() - started)

    module, datamodule, _ = build_module(run, DomainDataModule(run.data, run.seed))
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay)
    loader = datamodule.train_dataloader().iterables["source"]
    started = time.perf_counter()
    for index, (images, labels) in enumerate(loader):
        if index == steps:
            break
        loss = F.cross_entropy(module.head(module.backbone(module.preprocess(images))), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    plain = steps * batch / (time.perf_counter() - started)
    return lightning, plain


def data_wait_share(tmp: Path, quick: bool) -> float:
    """Fraction of training-loop time between batches (fetching data) rather than inside steps."""
    import pytorch_lightning as pl

    from tlbench.train import train

    class StepTimer(pl.Callback):
        def __init__(self):
            self.inside = 0.0
            self.between = 0.0
            self.last_end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self.last_end is not None:
                self.between += now - self.last_end
            self.start = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last_end = time.perf_counter()
            self.inside += self.last_end - self.start

        def on_validation_start(self, trainer, pl_module):
            self.last_end = None

    timer = StepTimer()
    size = 600 if quick else 6000
    train(compose_run(["backbone=small_cnn", "data=digits", "adapt=dann", "trainer.max_epochs=2", f"data.synthetic_size={size}"], tmp),
          extra_callbacks=[timer])
    return timer.between / (timer.between + timer.inside)


SCALING_CHILD = """
import json, resource, sys, time
from tlbench.cli import compose
from tlbench.config import validate
from tlbench.data.datamodule import DomainDataModule
from tlbench.train import build_module
import pytorch_lightning as pl
run = validate(compose(["backbone=small_cnn", "backbone.input_size=28", "data=fashion", "data.batch_size=128",
                        "data.labels_per_class={per_class}", "trainer.feature_cache=false"]))
dm = DomainDataModule(run.data, run.seed)
module, dm, _ = build_module(run, dm)
times = []
class T(pl.Callback):
    def on_train_epoch_start(self, *a): self.t = time.perf_counter()
    def on_train_epoch_end(self, *a): times.append(time.perf_counter() - self.t)
trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[T()], num_sanity_val_steps=0)
trainer.fit(module, datamodule=dm)
print(json.dumps({{"images": len(dm.source_train), "epoch_s": min(times), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def scaling(per_class: int) -> dict:
    code = SCALING_CHILD.format(per_class=per_class)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script works")
    args = parser.parse_args()
    os.environ.setdefault("TLBENCH_OFFLINE", "1")
    from tlbench.console import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(os.cpu_count() or 1)
    lines = [
        "# Performance benchmarks",
        "",
        f"Command: `.venv/bin/python experiments/perf/benchmark.py --repeats {args.repeats}{' --quick' if args.quick else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}. Medians over {args.repeats} repeats.",
        "",
    ]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.environ["TLBENCH_CACHE"] = str(tmp / "cache")  # cold feature cache: its build time is counted
        cached, uncached, acc_cached, acc_uncached = [], [], None, None
        for repeat in range(args.repeats):
            for path in (tmp / "cache" / "features").glob("*.pt"):
                path.unlink()
            seconds, acc_cached = linear_probe_sweep(tmp, cached=True, quick=args.quick)
            cached.append(seconds)
            seconds, acc_uncached = linear_probe_sweep(tmp, cached=False, quick=args.quick)
            uncached.append(seconds)
        c, u = statistics.median(cached), statistics.median(uncached)
        same = all(abs(a - b) < 1e-6 for a, b in zip(acc_cached, acc_uncached))
        lines += [
            "## 1. Linear-probe sweep: cached vs uncached frozen features",
            "",
            f"{len(acc_cached)} configs (learning rate × head) × {2 if args.quick else 10} epochs, EfficientNet-Lite0 "
            "(ImageNet, 32 px) on digits (1,000 synthetic source images, 898 target), feature cache cold at the start of each repeat.",
            "",
            "| path | wall time (s) | target acc per config |",
            "|---|---|---|",
            f"| uncached | {u:.1f} | {', '.join(f'{a:.4f}' for a in acc_uncached)} |",
            f"| cached | {c:.1f} | {', '.join(f'{a:.4f}' for a in acc_cached)} |",
            "",
            f"Speed-up **{u / c:.1f}×** (target ≥ 20×); accuracies identical: **{same}**.",
            "",
        ]

        steps = 10 if args.quick else 60
        pairs = [lightning_vs_plain(tmp, steps) for _ in range(args.repeats)]
        lightning = statistics.median(p[0] for p in pairs)
        plain = statistics.median(p[1] for p in pairs)
        lines += [
            "## 2. Lightning Trainer vs a plain PyTorch loop",
            "",
            f"EfficientNet-Lite0 full fine-tune at 32 px, source-only, batch 64, {steps} steps, same data loader.",
            "",
            "| loop | images/s |",
            "|---|---|",
            f"| plain PyTorch | {plain:.1f} |",
            f"| TransferModule + Trainer | {lightning:.1f} |",
            "",
            f"Ratio **{lightning / plain:.2f}×** (target ≥ 0.9×).",
            "",
        ]

        shares = [data_wait_share(tmp, args.quick) for _ in range(args.repeats)]
        lines += [
            "## 3. Share of step time waiting for data",
            "",
            "small_cnn + DANN on digits, 2 epochs: time between a batch's end and the next batch's start over total loop time.",
            "",
            f"Median share **{100 * statistics.median(shares):.1f}%** (target < 10%); repeats: "
            + ", ".join(f"{100 * s:.1f}%" for s in shares),
            "",
        ]

    sizes = (10, 100) if args.quick else (100, 1000, 5400)
    rows = [scaling(n) for n in sizes]
    lines += [
        "## 4. Scaling with dataset size",
        "",
        "small_cnn at 28 px, batch 128, Fashion-MNIST labelled subsets, best of 2 epochs; one process per size.",
        "",
        "| images | epoch time (s) | µs per image | peak RSS (MB) |",
        "|---|---|---|---|",
        *[f"| {r['images']} | {r['epoch_s']:.2f} | {1e6 * r['epoch_s'] / r['images']:.0f} | {r['peak_mb']:.0f} |" for r in rows],
        "",
    ]
    out = ROOT / "results" / "perf.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
