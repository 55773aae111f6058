"""Performance as users meet it: whole `tlbench` commands, timed end to end, arms interleaved (A B, B A,
A B, ...), the machine's load recorded before every command, medians and minima reported. Writes
results/perf.md.

    .venv/bin/python experiments/perf/benchmark.py [--pairs 3] [--quick]

1. Cached vs uncached linear-probe grid: `tlbench -m` over 4 learning rates × 2 heads, EfficientNet-Lite0
   (ImageNet) on the embedded digits, feature cache cold at the start of every command.
2. Where a sweep's time goes: process start + imports, each run's train() split into Lightning fit/test
   and the rest (per-run overhead), and what the sweep spends outside its runs (experiments/perf/timed_tlbench.py).
3. A 50-run tiny grid as one `tlbench -m` vs 50 invocations of a plain PyTorch script doing the same
   training (experiments/perf/plain_run.py); RSS of the sweep process after runs 5, 20 and 50.
4. `tlbench --help` and `tlbench report --help` wall time.
5. TransferModule under the Trainer that train.py builds (MLflow logger, checkpointing, deterministic
   mode) vs a plain PyTorch loop on the same model and batches.
6. A head on cached features with 1 vs 2 intra-op threads (trainer.threads), wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
PROBE_GRID = [
    "backbone=efficientnet_lite0",
    "freeze=linear_probe",
    "data=digits",
    "data.synthetic_size=1000",
    "optim.lr=3e-4,1e-3,3e-3,1e-2",
    "head.hidden=choice([],[128])",
]
TINY_RUN = ["backbone=small_cnn", "data=digits", "data.synthetic_size=400", "data.batch_size=32", "trainer.max_epochs=1"]


class Timed:
    """One command's wall time, child CPU time and the 1-minute load average when it started."""

    def __init__(self, command: list[str], env: dict, cwd: Path):
        self.load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
        self.wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            raise SystemExit(f"benchmark command failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")


def environment(work: Path, name: str, threads: int | None = None) -> dict:
    """A fresh cache folder (cold feature cache) and offline mode for one command."""
    env = dict(os.environ, TLBENCH_OFFLINE="1", TLBENCH_CACHE=str(work / "cache" / name))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def tlbench(work: Path, name: str, overrides: list[str], timings: Path | None = None, multirun: bool = True) -> list[str]:
    """A tlbench command recording into its own store; through timed_tlbench.py when `timings` is given."""
    head = [PYTHON, str(HERE / "timed_tlbench.py"), str(timings)] if timings else [PYTHON, "-m", "tlbench"]
    folder = work / name
    return (
        head
        + (["-m"] if multirun else [])
        + overrides
        + [
            f"tracking.uri=sqlite:///{folder}/mlflow.db",
            f"checkpoint_dir={folder}/ckpt",
            "trainer.enable_progress_bar=false",
            "tracking.log_model=false",
            f"hydra.sweep.dir={folder}/sweep",
            f"hydra.run.dir={folder}/run",
        ]
    )


def interleaved(pairs: int, arms: dict[str, callable]) -> dict[str, list]:
    """Run each arm once per pair, alternating which goes first."""
    names = list(arms)
    results: dict[str, list] = {name: [] for name in names}
    for index in range(pairs):
        for name in names if index % 2 == 0 else names[::-1]:
            results[name].append(arms[name](index))
    return results


def accuracies(store: Path) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        f"lr={r.data.params['optim.lr']} wd={r.data.params['optim.weight_decay']} hidden={r.data.params['head.hidden']}": r.data.metrics["test/target_acc"]
        for r in runs
        if "tlbench.parent" not in r.data.tags
    }


def stats(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} (min {min(values):.{digits}f})"


def loads(timed: list[Timed]) -> str:
    return ", ".join(f"{t.load:.1f}" for t in timed)


def section_probe_grid(work: Path, pairs: int, epochs: int, lines: list[str]) -> dict:
    def arm(cached: bool):
        def run(index: int) -> Timed:
            name = f"probe_{'cached' if cached else 'uncached'}_{index}"
            overrides = PROBE_GRID + [f"trainer.max_epochs={epochs}", f"trainer.feature_cache={str(cached).lower()}"]
            timed = Timed(tlbench(work, name, overrides, work / f"{name}.json"), environment(work, name), work)
            timed.accuracies = accuracies(work / name / "mlflow.db")
            timed.timings = json.loads((work / f"{name}.json").read_text())
            return timed

        return run

    results = interleaved(pairs, {"uncached": arm(False), "cached": arm(True)})
    cached, uncached = results["cached"], results["uncached"]
    same = all(c.accuracies == u.accuracies for c, u in zip(cached, uncached))
    ratio = statistics.median(u.wall for u in uncached) / statistics.median(c.wall for c in cached)
    lines += [
        "## 1. Linear-probe grid: cached vs uncached frozen features, end to end",
        "",
        f"`tlbench -m {' '.join(PROBE_GRID)} trainer.max_epochs={epochs} trainer.feature_cache=true|false` (8 runs in one process, "
        "EfficientNet-Lite0 ImageNet at 32 px, 1,000 synthetic source digits, 898 target), a new store and a cold cache "
        f"folder for every command, {pairs} interleaved pairs.",
        "",
        "| arm | wall s, median (min) | load average at start |",
        "|---|---|---|",
        f"| uncached | {stats([u.wall for u in uncached])} | {loads(uncached)} |",
        f"| cached | {stats([c.wall for c in cached])} | {loads(cached)} |",
        "",
        f"Speed-up **{ratio:.1f}×** (goal ≥ 30×, stretch 50×); accuracies identical in every pair: **{same}**.",
        "",
    ]
    return {"cached": cached, "uncached": uncached}


def overhead_rows(label: str, timed_runs: list[Timed]) -> tuple[str, float]:
    per_run, outside, imports = [], [], []
    for timed in timed_runs:
        runs = timed.timings["runs"]
        per_run += [r["train_s"] - r.get("fit_s", 0.0) - r.get("test_s", 0.0) for r in runs[1:]]  # the first run pays first-use costs
        imports.append(timed.timings["imports_s"])
        outside.append((timed.wall - timed.timings["imports_s"] - sum(r["train_s"] for r in runs)) / len(runs))
        training = statistics.median(r.get("fit_s", 0.0) + r.get("test_s", 0.0) for r in runs[1:])
    value = statistics.median(per_run)
    return (f"| {label} | {statistics.median(imports):.2f} | {training:.2f} | {value:.2f} | {statistics.median(outside):.2f} |", value)


def section_overhead(probe: dict, tiny: list[Timed], lines: list[str]) -> None:
    rows = [
        overhead_rows("cached linear probe (8 runs)", probe["cached"]),
        overhead_rows("uncached linear probe (8 runs)", probe["uncached"]),
        overhead_rows(f"tiny small_cnn run ({len(tiny[0].timings['runs'])} runs)", tiny),
    ]
    lines += [
        "## 2. Where a sweep's time goes",
        "",
        "From the commands above, timed inside the process (experiments/perf/timed_tlbench.py: the `tlbench` entry point with",
        "timers around train(), Trainer.fit and Trainer.test). *Per-run overhead* is a run's train() minus its fit and test",
        "(data and model build, MLflow run creation and params, checkpoint selection, artifacts, collection), runs 2..N;",
        "*outside runs* is the command's wall time minus imports minus all train() calls, per run (Hydra composing",
        "and launching each job, sweep callbacks, the end-of-sweep table and parent run, and the once-per-process",
        "costs the first job pays: creating the store, importing MLflow; so it shrinks as a grid grows).",
        "",
        "| grid | process start + imports s | fit + test s per run | per-run overhead s (goal < 0.5) | outside runs s per run |",
        "|---|---|---|---|---|",
        *[row for row, _ in rows],
        "",
    ]


def section_peer(work: Path, pairs: int, runs: int, steps: int, lines: list[str]) -> list[Timed]:
    def sweep(index: int) -> Timed:
        name = f"tiny_sweep_{index}"
        overrides = TINY_RUN + [f"trainer.limit_train_batches={steps}", f"seed=range(0,{runs})"]
        timed = Timed(tlbench(work, name, overrides, work / f"{name}.json"), environment(work, "tiny"), work)
        timed.timings = json.loads((work / f"{name}.json").read_text())
        return timed

    def scripts(index: int) -> Timed:
        out = work / f"plain_{index}.jsonl"
        command = ["bash", "-c", " && ".join(f"{PYTHON} {HERE / 'plain_run.py'} {seed} {steps} {out}" for seed in range(runs))]
        return Timed(command, environment(work, "tiny"), work)

    results = interleaved(pairs, {"tlbench": sweep, "plain": scripts})
    ours, peer = results["tlbench"], results["plain"]
    ratio = statistics.median(t.wall for t in ours) / statistics.median(p.wall for p in peer)
    rss = {n: statistics.median(t.timings["runs"][n - 1]["rss_mb"] for t in ours) for n in (5, 20, runs) if n <= runs}
    lines += [
        f"## 3. A {runs}-run grid: one `tlbench -m` vs {runs} plain scripts",
        "",
        f"`tlbench -m {' '.join(TINY_RUN)} trainer.limit_train_batches={steps} seed=range(0,{runs})` against {runs} invocations of",
        f"experiments/perf/plain_run.py (same network, data, batch and {steps} AdamW steps; it records nothing). tlbench also",
        "validates every epoch, tests the selected checkpoint, and records params, metrics, config, plots and the sweep's parent run.",
        "",
        "| arm | wall s, median (min) | CPU s, median | load average at start |",
        "|---|---|---|---|",
        f"| tlbench -m, one process | {stats([t.wall for t in ours])} | {statistics.median(t.cpu for t in ours):.1f} | {loads(ours)} |",
        f"| {runs} plain scripts | {stats([p.wall for p in peer])} | {statistics.median(p.cpu for p in peer):.1f} | {loads(peer)} |",
        "",
        f"Ratio tlbench / scripts **{ratio:.2f}** (goal ≤ 1.0).",
        "",
        "RSS of the sweep process after run "
        + ", ".join(f"{n}: {mb:.0f} MB" for n, mb in rss.items())
        + (f" (change from run 5 to run {runs}: {100 * (rss[runs] / rss[5] - 1):+.1f}%; goal ±5%)." if 5 in rss and runs in rss else "."),
        "",
    ]
    return ours


def section_help(work: Path, repeats: int, lines: list[str]) -> None:
    rows = []
    for label, command in (("tlbench --help", [PYTHON, "-m", "tlbench", "--help"]), ("tlbench report --help", [PYTHON, "-m", "tlbench", "report", "--help"])):
        timed = [Timed(command, environment(work, "help"), work) for _ in range(repeats)]
        rows.append(f"| `{label}` | {stats([t.wall for t in timed], 2)} | {loads(timed)} |")
    lines += [
        "## 4. Help without the heavy imports",
        "",
        f"{repeats} repeats each (goal < 1.5 s).",
        "",
        "| command | wall s, median (min) | load average at start |",
        "|---|---|---|",
        *rows,
        "",
    ]


#: What both loop benchmarks' child processes import.
CHILD_IMPORTS = """
import json, sys, time
import torch, torch.nn.functional as F
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from tlbench.composition import compose_config as compose
from tlbench.config import validate
from tlbench.data.datamodule import DomainDataModule
from tlbench.mlflow_logger import MlflowMetricLogger
from tlbench.tracking import recorded_run
from tlbench.assembly import build_module
from tlbench.module import TransferModule
from tlbench.plan import plan_run
from tlbench.trainer_factory import build_trainer
"""
#: The tlbench side of both loop benchmarks: the Trainer train.py builds (MLflow logger, checkpointing,
#: deterministic mode), with the start of every optimizer step timed for the steady-state rate.
LIGHTNING_ARM = """if arm == "lightning":  # the Trainer train.py builds: MLflow logger, checkpointing, deterministic mode
    class StepClock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step_starts.append(time.perf_counter())

    with recorded_run(plan.store, "loop", {}) as recorder:
        checkpoint = ModelCheckpoint(dirpath=run.checkpoint_dir, monitor="val/source_acc", mode="max", save_last=True)
        trainer = build_trainer(plan, MlflowMetricLogger(recorder), checkpoint, [StepClock()])
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - started
"""

LOOP_CHILD = (
    CHILD_IMPORTS
    + """work, steps, arm = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = validate(compose(["backbone=efficientnet_lite0", "data=digits", "data.synthetic_size=3000", "trainer.feature_cache=false",
                        "batch_composition=source",  # both loops forward the 64 source images of a step, nothing else
                        "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=1",
                        "trainer.enable_progress_bar=false", f"tracking.uri=sqlite:///{work}/loop.db"]))
run.output_dir, run.checkpoint_dir = work + "/out", work + "/ckpt"
torch.manual_seed(0)
plan = plan_run(run)
module, datamodule, _ = build_module(plan, DomainDataModule(run.data, run.seed), TransferModule)
step_starts = []  # when each optimizer step began (its batch already loaded), for the steady-state rate
"""
    + LIGHTNING_ARM
    + """else:
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay)
    loader = datamodule.train_dataloader().iterables["source"]
    started = time.perf_counter()
    for index, (images, labels) in enumerate(loader):
        if index == steps:
            break
        step_starts.append(time.perf_counter())
        loss = F.cross_entropy(module.head(module.backbone(module.preprocess(images))), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
warm = min(10, len(step_starts) // 3)  # the first steps warm up allocators and caches in both loops
steady = (len(step_starts) - 1 - warm) / (step_starts[-1] - step_starts[warm])
print(json.dumps({"images_per_s": steps * run.data.batch_size / seconds, "steady_images_per_s": steady * run.data.batch_size}))
"""
)


DA_STEP_CHILD = (
    CHILD_IMPORTS
    + """work, steps, arm, method = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
# the quickstart's DANN-paper digit recipe: one joint batch of 64 source + 64 target images at 20 px
run = validate(compose(["experiment=da_digits", f"adapt={method}", "trainer.max_epochs=1", f"trainer.steps_per_epoch={steps}",
                        "trainer.limit_val_batches=1", f"tracking.uri=sqlite:///{work}/loop.db"]))
run.output_dir, run.checkpoint_dir = work + "/out", work + "/ckpt"
torch.manual_seed(0)
plan = plan_run(run)
module, datamodule, _ = build_module(plan, DomainDataModule(run.data, run.seed, steps_per_epoch=steps), TransferModule)
step_starts = []
"""
    + LIGHTNING_ARM
    + """else:  # the same forward, losses and SGD update, written as a plain loop over the same loader
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=run.optim.lr, momentum=0.9, weight_decay=run.optim.weight_decay)  # the recipe's SGD
    loader = datamodule.train_dataloader()
    started = time.perf_counter()
    for index, batch in enumerate(loader):
        batch = batch[0] if isinstance(batch, tuple) else batch
        if index == steps:
            break
        step_starts.append(time.perf_counter())
        images_s, labels_s = batch["source"][:2]
        images_t = batch.get("target")
        inputs = torch.cat([module.preprocess(images_s), module.preprocess(images_t)]) if images_t is not None else module.preprocess(images_s)
        features = module.features(inputs)
        features_s, features_t = features.split([len(images_s), len(features) - len(images_s)])
        logits_s, logits_t = module.head(features_s), module.head(features_t)
        loss = F.cross_entropy(logits_s, labels_s) + module.adapter.loss(features_s, features_t, logits_s, logits_t, labels_s, index / steps, step=index).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
warm = min(10, len(step_starts) // 3)
steady = (len(step_starts) - 1 - warm) / (step_starts[-1] - step_starts[warm])
print(json.dumps({"steps_per_s": steps / seconds, "steady_steps_per_s": steady}))
"""
)


def section_da_step(work: Path, pairs: int, steps: int, lines: list[str]) -> None:
    """A DA step under tlbench's Trainer against the same step as a plain loop, per method."""

    def arm(name: str, method: str):
        def run(index: int) -> dict:
            out = subprocess.run(
                [PYTHON, "-c", DA_STEP_CHILD, str(work / f"da_{method}_{name}_{index}"), str(steps), name, method],
                env=environment(work, "da_step"),
                cwd=work,
                capture_output=True,
                text=True,
                check=True,
            )
            return json.loads(out.stdout.strip().splitlines()[-1])

        return run

    rows = []
    load = os.getloadavg()[0]
    for method in ("source_only", "dann_paper_digits", "cdan"):
        results = interleaved(pairs, {"lightning": arm("lightning", method), "plain": arm("plain", method)})

        def median(which: str, key: str) -> float:
            return statistics.median(r[key] for r in results[which])

        rows.append(
            f"| {method} | {median('plain', 'steady_steps_per_s'):.1f} | {median('lightning', 'steady_steps_per_s'):.1f} | "
            f"**{median('lightning', 'steady_steps_per_s') / median('plain', 'steady_steps_per_s'):.2f}×** | "
            f"**{median('lightning', 'steps_per_s') / median('plain', 'steps_per_s'):.2f}×** |"
        )
    lines += [
        "## 6. A DA step under tlbench vs the same step in a plain loop",
        "",
        "The quickstart's recipe (`experiment=da_digits`: the DANN paper's digit network, one joint batch of 64 source + 64",
        f"target images at 20 px, SGD), {steps} steps, one intra-op thread. The plain loop runs the same forward, losses and",
        "optimizer on the same loader; the tlbench side is `trainer_factory.build_trainer` with the MLflow logger, checkpointing and",
        "one validation batch per loader. Steady: steps/s from step 10 to the last; whole: steps over the wall time of `fit`",
        f"(set-up, validation and checkpoint included). Medians of {pairs} interleaved pairs; 1-minute load average {load:.1f} at the start.",
        "",
        "| method | plain loop, steps/s | tlbench, steps/s | steady ratio | whole-run ratio |",
        "|---|--:|--:|--:|--:|",
        *rows,
        "",
    ]


def section_loop(work: Path, pairs: int, steps: int, lines: list[str]) -> None:
    def arm(name: str):
        def run(index: int) -> dict:
            out = subprocess.run(
                [PYTHON, "-c", LOOP_CHILD, str(work / f"loop_{name}_{index}"), str(steps), name],
                env=environment(work, "loop"),
                cwd=work,
                capture_output=True,
                text=True,
                check=True,
            )
            return json.loads(out.stdout.strip().splitlines()[-1])

        return run

    results = interleaved(pairs, {"lightning": arm("lightning"), "plain": arm("plain")})

    def rates(arm: str, key: str) -> list[float]:
        return [measured[key] for measured in results[arm]]

    def ratio(key: str) -> float:
        return statistics.median(rates("lightning", key)) / statistics.median(rates("plain", key))

    lines += [
        "## 5. The Trainer tlbench builds vs a plain PyTorch loop",
        "",
        "EfficientNet-Lite0 full fine-tune at 32 px, source-only with `batch_composition=source` (both loops forward the same 64",
        "source images per step; a first version of this benchmark let the Lightning side forward the target batch too and measured",
        f"0.46×), {steps} steps of the same loader, one process per",
        "measurement. The Lightning side is `trainer_factory.build_trainer` with the MLflow logger, a ModelCheckpoint and",
        "`deterministic=True`, plus one validation batch per loader and the checkpoint write at the epoch's end; the plain loop",
        f"does only the steps. *Whole fit*: {steps} steps' images over the wall time of `fit` (or of the loop); *steady steps*:",
        "from the start of step 10 to the start of the last step, i.e. without the fit's set-up, validation and checkpoint.",
        f"{pairs} interleaved pairs.",
        "",
        "| loop | whole fit, images/s, median (min) | steady steps, images/s, median (min) |",
        "|---|---|---|",
        *(
            f"| {label} | {stats(rates(arm, 'images_per_s'))} | {stats(rates(arm, 'steady_images_per_s'))} |"
            for label, arm in (("plain PyTorch", "plain"), ("TransferModule + tlbench's Trainer", "lightning"))
        ),
        "",
        f"Ratio **{ratio('images_per_s'):.2f}×** for the whole fit, **{ratio('steady_images_per_s'):.2f}×** for the steady steps (goal ≥ 0.9×).",
        "",
    ]


def section_threads(work: Path, pairs: int, epochs: int, lines: list[str]) -> None:
    def arm(threads: int):
        def run(index: int) -> Timed:
            name = f"threads_{threads}_{index}"
            overrides = [
                "backbone=efficientnet_lite0",
                "freeze=linear_probe",
                "data=digits",
                "data.synthetic_size=1000",
                f"trainer.max_epochs={epochs}",
                f"trainer.threads={threads}",
            ]
            env = environment(work, "threads")  # one warm cache for all: the head's training is what differs
            return Timed(tlbench(work, name, overrides, multirun=False), env, work)

        return run

    Timed(
        tlbench(
            work,
            "threads_warm",
            ["backbone=efficientnet_lite0", "freeze=linear_probe", "data=digits", "data.synthetic_size=1000", "trainer.max_epochs=1"],
            multirun=False,
        ),
        environment(work, "threads"),
        work,
    )
    results = interleaved(pairs, {"1 thread": arm(1), "2 threads": arm(2)})
    lines += [
        "## 7. A head on cached features: 1 vs 2 intra-op threads",
        "",
        f"`tlbench backbone=efficientnet_lite0 freeze=linear_probe data=digits data.synthetic_size=1000 trainer.max_epochs={epochs}"
        " trainer.threads=1|2`, features cached beforehand (warm cache), one run per command. The automatic setting",
        "(trainer.threads=null) picks 1 thread for exactly this case.",
        "",
        "| threads | wall s, median (min) | CPU s, median | load average at start |",
        "|---|---|---|---|",
        *[f"| {name} | {stats([t.wall for t in timed])} | {statistics.median(t.cpu for t in timed):.1f} | {loads(timed)} |" for name, timed in results.items()],
        "",
    ]


def section_fused(work: Path, pairs: int, epochs: int, lines: list[str]) -> None:
    """Heads on warm cached features, 8 and 64 configurations, fused (the default) vs one by one."""
    grids = {
        8: ["optim.lr=3e-4,1e-3,3e-3,1e-2", "head.hidden=choice([],[128])"],
        64: ["optim.lr=1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1", "optim.weight_decay=0,1e-4,1e-3,1e-2", "head.hidden=choice([],[128])"],
    }
    base = ["backbone=efficientnet_lite0", "freeze=linear_probe", "data=digits", "data.synthetic_size=1000", f"trainer.max_epochs={epochs}"]
    Timed(tlbench(work, "fused_warm", base + ["trainer.max_epochs=1"], multirun=False), environment(work, "fused"), work)

    def arm(size: int, fuse: bool):
        def run(index: int) -> Timed:
            name = f"fused_{size}_{fuse}_{index}"
            timed = Timed(tlbench(work, name, base + grids[size] + [f"trainer.fuse_heads={str(fuse).lower()}"]), environment(work, "fused"), work)
            timed.accuracies = accuracies(work / name / "mlflow.db")
            return timed

        return run

    results = interleaved(pairs, {f"{size} {'fused' if fuse else 'one by one'}": arm(size, fuse) for size in grids for fuse in (True, False)})
    wall = {name: statistics.median(t.wall for t in timed) for name, timed in results.items()}
    same = all(f.accuracies == u.accuracies for size in grids for f, u in zip(results[f"{size} fused"], results[f"{size} one by one"]))
    lines += [
        "## 8. Fused head sweeps: 8 and 64 heads on the same cached features",
        "",
        f"`tlbench -m {' '.join(base)} <grid> trainer.fuse_heads=true|false`, features cached beforehand (warm cache), one "
        f"process per command, a new store each; grids: 8 = `{' '.join(grids[8])}`, 64 = `{' '.join(grids[64])}`. {pairs} interleaved repeats.",
        "",
        "| grid | wall s, median (min) | CPU s, median | load average at start |",
        "|---|---|---|---|",
        *[f"| {name} | {stats([t.wall for t in timed])} | {statistics.median(t.cpu for t in timed):.1f} | {loads(timed)} |" for name, timed in results.items()],
        "",
        f"Fused vs one by one: **{wall['8 one by one'] / wall['8 fused']:.2f}×** faster at 8 heads, **{wall['64 one by one'] / wall['64 fused']:.2f}×** at 64. "
        f"64 fused heads take **{wall['64 fused'] / wall['8 fused']:.2f}×** the time of 8 (goal < 2×). "
        f"Test accuracies of every run identical fused and one by one: **{same}**.",
        "",
    ]


def section_study(work: Path, trials: int, epochs: int, lines: list[str]) -> None:
    """What a tuning budget costs: trials per CPU-hour and per hour, with and without pruning and workers."""
    base = ["backbone=dann_mnist", "data=digits", "data.synthetic_size=1000", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false"]
    Timed(tlbench(work, "study_warm", base + ["trainer.max_epochs=1"], multirun=False), environment(work, "study"), work)  # data cache built

    def arm(name: str, options: list[str]) -> Timed:
        folder = work / f"study_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            PYTHON, "-m", "tlbench", "search", "--space", "default", "--n-trials", str(trials), "--seed", "0",
            "--storage", f"sqlite:///{folder}/optuna.db", "--out-dir", str(folder / "out"), *options,
            *base, f"tracking.uri=sqlite:///{folder}/mlflow.db", f"checkpoint_dir={folder}/ckpt",
        ]  # fmt: skip
        return Timed(command, environment(work, "study"), work)

    arms = {
        "1 worker, no pruning": ["--workers", "1", "--pruner", "none"],
        "1 worker, median pruning": ["--workers", "1", "--pruner", "median"],
        "2 workers, median pruning": ["--workers", "2", "--pruner", "median"],
    }
    results = {name: arm(name.replace(" ", "_").replace(",", ""), options) for name, options in arms.items()}
    lines += [
        "## 9. What a study costs: trials per CPU-hour",
        "",
        f"`tlbench search --space default --n-trials {trials} --workers 1|2 --pruner none|median {' '.join(base)}` (learning rate "
        "and weight decay by TPE; a trial is one run, selected on source validation). One study per arm, run one after the other.",
        "",
        "| arm | wall s | CPU s | trials per hour | trials per CPU-hour | load average at start |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {t.wall:.0f} | {t.cpu:.0f} | {trials * 3600 / t.wall:.0f} | {trials * 3600 / t.cpu:.0f} | {t.load:.1f} |"
            for name, t in results.items()
        ],
        "",
        "A fair comparison of A methods with a budget of T trials and S evaluation seeds costs A × (T + S) runs: divide by the "
        "trials-per-hour column of the arm you run to plan it.",
        "",
    ]


SECTIONS = ("grid", "help", "loop", "da_step", "threads", "fused", "study")
#: Also selectable with --sections: §1 alone, without the 50-run peer comparison "grid" adds.
EXTRA_SECTIONS = ("probe",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved repeats of every comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script works")
    parser.add_argument(
        "--sections", help=f"comma-separated subset of {','.join(SECTIONS + EXTRA_SECTIONS)} (printed, or written to --out; results/perf.md is a full run's)"
    )
    parser.add_argument("--out", help="with --sections: write the sections here too")
    args = parser.parse_args()
    chosen = args.sections.split(",") if args.sections else list(SECTIONS)
    import torch

    quick = args.quick
    lines = [
        "# Performance, end to end",
        "",
        f"Command: `.venv/bin/python experiments/perf/benchmark.py --pairs {args.pairs}{' --quick' if quick else ''}"
        f"{f' --sections {args.sections}' if args.sections else ''}{f' --out {args.out}' if args.out else ''}` "
        f"(this file was written by it, {time.strftime('%Y-%m-%d')}).  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}. Every comparison runs its arms interleaved "
        f"({args.pairs} pairs, the first arm alternating); the 1-minute load average is recorded when each command starts.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="tlbench-perf-") as folder:
        work = Path(folder)
        if "grid" in chosen:
            probe = section_probe_grid(work, args.pairs, 2 if quick else 10, lines)
            tiny_lines: list[str] = []
            tiny = section_peer(work, args.pairs, 6 if quick else 50, 5 if quick else 20, tiny_lines)
            section_overhead(probe, tiny, lines)
            lines += tiny_lines
        if "probe" in chosen:
            section_probe_grid(work, args.pairs, 2 if quick else 10, lines)
        if "help" in chosen:
            section_help(work, 3 if quick else 5, lines)
        if "loop" in chosen:
            section_loop(work, args.pairs, 10 if quick else 60, lines)
        if "da_step" in chosen:
            section_da_step(work, args.pairs, 12 if quick else 250, lines)
        if "threads" in chosen:
            section_threads(work, args.pairs, 2 if quick else 20, lines)
        if "fused" in chosen:
            section_fused(work, args.pairs, 2 if quick else 10, lines)
        if "study" in chosen:
            section_study(work, 4 if quick else 16, 2 if quick else 6, lines)
    print("\n".join(lines))
    if args.sections and args.out and not quick:
        (ROOT / args.out).write_text("\n".join(lines))
    if not quick and not args.sections:  # a quick check or a subset only prints
        (ROOT / "results" / "perf.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
