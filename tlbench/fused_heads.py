"""Fused head sweeps: the jobs of one sweep that train only heads on the same cached features (same data,
seed, backbone, freezing schedule, trainer settings and method needs; learning rate, weight decay, head
shape and method hyperparameters may differ) are trained together before the jobs run. Each batch is
read once for all of them; each run keeps its own head, optimizer, scheduler, random-number stream and
selection, and one backward pass goes through the sum of their losses: their parameters are disjoint, so
every head gets exactly the gradient it gets alone. A sweep of 64 heads then pays one Trainer and one
pass over the batches instead of 64.

Each job is still recorded by train.py as its own run (params, per-epoch metrics, selected checkpoint,
test, artifacts): it takes its group's outcome (`take_outcome`) instead of fitting. A run that diverges
fails alone; the others go on. Off with `trainer.fuse_heads=false`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

from .config import RunConfig, to_plain_dict
from .errors import TlbenchError
from .feature_cache import CachedBackbone
from .mlflow_logger import numbered_epochs
from .plan import RunPlan

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One job of a fused group, built as train.py would build it."""

    plan: RunPlan
    module: Any
    datamodule: Any
    raw_datamodule: Any
    cache_decision: str


@dataclass
class FusedOutcome:
    """What one run's fit produced inside its group: what its job records instead of fitting."""

    member: Member
    #: (metrics, step, time in ms) as Lightning handed them to the logger, with this run's own names.
    points: list[tuple[dict[str, float], int, int]]
    #: Weights at the selected epoch (None when the run failed), and that epoch's number (1 = the first).
    state: dict[str, torch.Tensor] | None
    epoch: int | None
    #: Where the group's fit ended: its global step and epoch count (an unfused run's test is logged there).
    global_step: int
    current_epoch: int
    #: The run's own failure (e.g. a diverged loss); the other runs of the group are unaffected.
    error: TlbenchError | None
    group_size: int


#: Outcomes of this process's fused groups, by config hash, until their jobs take them.
_outcomes: dict[str, FusedOutcome] = {}


def take_outcome(config_hash: str) -> FusedOutcome | None:
    """The fused outcome of the configuration `config_hash`, once (None if it was not fused)."""
    return _outcomes.pop(config_hash, None)


def why_not_fusable(plan: RunPlan, cache_decision: str) -> str | None:
    """None when `plan` can train inside a group: only heads train, on cached features, on one device,
    in a fresh run, with nothing that acts on all of a run's parameters at once."""
    run = plan.run
    if not run.trainer.fuse_heads:
        return "trainer.fuse_heads=false"
    if cache_decision != "on":
        return "the backbone's features are not cached"
    if plan.source_run_id or plan.needs.evaluation_hook:
        return "the method changes or starts from a recorded model"
    if run.trainer.gradient_clip_val or run.trainer.options or run.trainer.fast_dev_run:
        return "gradient clipping, extra Trainer options or fast_dev_run"
    if run.trainer.devices not in (1, "1", "auto") or (run.trainer.devices == "auto" and torch.cuda.device_count() > 1):
        return "several devices"
    if run.resume:
        return "resume=true"
    if run.head.solver != "optimizer":
        return "head.solver=lbfgs fits each head on its own full batch"
    return None


def group_key(plan: RunPlan, module) -> str:
    """What the runs of one group share: everything that shapes the batches and the features."""
    run = plan.run
    shared = {
        "data": to_plain_dict(run)["data"],
        "seed": run.seed,
        "backbone": to_plain_dict(run)["backbone"],
        "freeze": to_plain_dict(run)["freeze"],
        "trainer": dataclasses.asdict(run.trainer),
        "needs": dataclasses.asdict(plan.needs),
        "batch_composition": module.batch_composition,
    }
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()


class RandomStreams:
    """Each run's own random-number state (torch, NumPy, Python), swapped in around its work, so a run
    that draws (dropout, Mixup's λ) draws what it would draw alone."""

    def __init__(self, count: int):
        self.states: list[tuple | None] = [None] * count

    @staticmethod
    def _capture() -> tuple:
        return torch.get_rng_state(), np.random.get_state(), random.getstate()

    def seeded(self, index: int) -> None:
        """The run has just seeded the global generators (its epoch start): that is its state now."""
        self.states[index] = self._capture()

    @contextmanager
    def of(self, index: int) -> Iterator[None]:
        state = self.states[index]
        if state is not None:
            torch.set_rng_state(state[0])
            np.random.set_state(state[1])
            random.setstate(state[2])
        try:
            yield
        finally:
            self.states[index] = self._capture()


class OptimizerGroup:
    """The runs' optimizers as the one optimizer Lightning steps: the closure (forward and backward of the
    summed losses) runs once, then each run's optimizer steps its own parameters."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.defaults: dict = {}
        self.state: dict = {}
        #: The runs' own group dicts (their schedulers change the learning rates in place).
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, own in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(own)


class SchedulerGroup:
    """The runs' step-wise schedulers, stepped together after every optimizer step."""

    def __init__(self, optimizer: OptimizerGroup, schedulers: list):
        self.optimizer = optimizer
        self.schedulers = schedulers

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict:
        return {"schedulers": [scheduler.state_dict() for scheduler in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        for scheduler, own in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(own)


def member_prefix(index: int) -> str:
    return f"run{index}/"


class FusedHeads(pl.LightningModule):
    """The modules of a group side by side, each a direct child (so Lightning hands each the trainer) whose
    logging goes to its own prefixed names. Hooks are forwarded to every run still alive; a run that raises
    a TlbenchError (a diverged loss or weights) is set aside with its error."""

    def __init__(self, modules: list, monitors: list[tuple[str | None, str]]):
        super().__init__()
        self.runs = tuple(modules)
        for index, module in enumerate(modules):
            self.add_module(f"run{index}", module)
            module.log = self._logger_of(index)
        self.failed: dict[int, TlbenchError] = {}
        self.streams = RandomStreams(len(modules))
        #: Per run: its selection metric and direction, best value so far, selected epoch and weights.
        self.monitors = monitors
        self.best: list[tuple[float, int, dict] | None] = [None] * len(modules)

    def _logger_of(self, index: int):
        prefix = member_prefix(index)

        def log(name: str, value, *args, **kwargs) -> None:
            pl.LightningModule.log(self, prefix + name, value, *args, **kwargs)

        return log

    def alive(self) -> Iterator[tuple[int, Any]]:
        return ((index, module) for index, module in enumerate(self.runs) if index not in self.failed)

    def _each(self, hook: str, *args) -> None:
        for index, module in list(self.alive()):
            with self.streams.of(index):
                self._guarded(index, getattr(module, hook), *args)

    def _guarded(self, index: int, call, *args):
        try:
            return call(*args)
        except TlbenchError as exc:
            log.info("fused run %d stopped: %s", index, exc)
            self.failed[index] = exc
            return None

    # ------------------------------------------------------------------ fit
    def configure_optimizers(self):
        optimizers, schedulers = [], []
        for module in self.runs:
            configured = module.configure_optimizers()
            module.fused_optimizer = configured["optimizer"]
            optimizers.append(configured["optimizer"])
            schedulers.append(configured["lr_scheduler"]["scheduler"])
        group = OptimizerGroup(optimizers)
        return {"optimizer": group, "lr_scheduler": {"scheduler": SchedulerGroup(group, schedulers), "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()

    def on_fit_start(self) -> None:
        self._each("on_fit_start")

    def on_train_epoch_start(self) -> None:
        for index, module in list(self.alive()):
            self._guarded(index, module.on_train_epoch_start)  # reseeds the global generators for its epoch
            self.streams.seeded(index)

    def training_step(self, batch, batch_idx):
        total = None
        for index, module in list(self.alive()):
            with self.streams.of(index):
                loss = self._guarded(index, module.training_step, batch, batch_idx)
            if loss is not None:
                total = loss if total is None else total + loss
        if total is None:  # every run of the group has failed: nothing left to train
            self.trainer.should_stop = True
        return total

    def on_train_epoch_end(self) -> None:
        self._each("on_train_epoch_end")

    # ----------------------------------------------------------- evaluation
    def on_validation_start(self) -> None:
        self._each("on_validation_start")

    def on_validation_epoch_start(self) -> None:
        self._each("on_validation_epoch_start")

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        for index, module in list(self.alive()):
            self._guarded(index, module.validation_step, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._each("on_validation_epoch_end")

    def on_validation_end(self) -> None:
        """Each run's checkpoint choice, as ModelCheckpoint makes it: the newest epoch without a monitor,
        else a strictly better value (NaN never chosen); the weights are kept in memory."""
        metrics = self.trainer.callback_metrics
        for index, module in self.alive():
            monitor, mode = self.monitors[index]
            value = float(metrics[member_prefix(index) + monitor]) if monitor else 0.0
            if monitor and np.isnan(value):
                value = -np.inf if mode == "max" else np.inf
            best = self.best[index]
            better = best is None or not monitor or (value > best[0] if mode == "max" else value < best[0])
            if better:
                state = {key: tensor.detach().clone() for key, tensor in module.state_dict().items()}
                self.best[index] = (value, self.current_epoch, state)


class PointsByRun(Logger):
    """Lightning's metrics split into each run's own points, under the run's own names."""

    def __init__(self, count: int):
        super().__init__()
        self.points: list[list[tuple[dict[str, float], int, int]]] = [[] for _ in range(count)]

    @property
    def name(self) -> str:
        return "fused"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Each run's params are recorded by its job."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = numbered_epochs(metrics)
        shared = {key: value for key, value in metrics.items() if not key.startswith("run")}
        own: dict[int, dict[str, float]] = {}
        for key, value in metrics.items():
            if key.startswith("run") and "/" in key:
                index, name = key.split("/", 1)
                own.setdefault(int(index[3:]), {})[name] = value
        now = int(time.time() * 1000)
        for index, values in own.items():
            self.points[index].append(({**values, **shared}, step or 0, now))


def train_group(members: list[Member]) -> list[FusedOutcome]:
    """Fit the runs of one group together; each one's outcome, failed or not."""
    from .threads import intra_op_threads, threads_for
    from .trainer_factory import build_trainer

    first = members[0]
    fused = FusedHeads([m.module for m in members], [(m.plan.monitor, m.plan.monitor_mode) for m in members])
    logger = PointsByRun(len(members))
    plan = dataclasses.replace(first.plan, trainer_arguments={**first.plan.trainer_arguments, "enable_progress_bar": False})
    with intra_op_threads(threads_for(first.plan.run.trainer.threads, first.module)):
        trainer = build_trainer(plan, logger, None)
        trainer.fit(fused, datamodule=first.datamodule)
    for member in members:  # each job fits and tests under its own Trainer from here on
        del member.module.log
        member.module.fused_optimizer = None
        member.module.trainer = None
    outcomes = []
    for index, member in enumerate(members):
        best = fused.best[index]
        error = fused.failed.get(index)
        outcomes.append(
            FusedOutcome(
                member,
                logger.points[index],
                None if error or best is None else best[2],
                None if error or best is None else best[1] + 1,
                trainer.global_step,
                trainer.current_epoch,
                error,
                len(members),
            )
        )
    return outcomes


#: More stages than any backbone has: a schedule that keeps this many frozen keeps every backbone frozen.
_ANY_STAGE_COUNT = 64


def may_fuse(run: RunConfig) -> bool:
    """What the config alone says: the backbone stays frozen and unchanged for the whole run, so its
    features can be cached and the job is worth building before the sweep runs. (Building a fine-tuning
    job here would cost a backbone construction and be thrown away.)"""
    from .freeze import SCHEDULES

    if not (run.trainer.fuse_heads and run.trainer.feature_cache) or run.resume or run.head.solver != "optimizer":
        return False
    if run.data.augment != "none" or run.batch_composition == "domain_bn":  # domain_bn splits the backbone's BatchNorm
        return False
    schedule = SCHEDULES.build(run.freeze)
    return schedule.bn_policy != "train" and schedule.always_frozen_prefix(_ANY_STAGE_COUNT, run.trainer.max_epochs) == _ANY_STAGE_COUNT


class SharedBackbones:
    """Builds each backbone of a sweep's fusable jobs once. A later job asking for the same backbone config
    from the same random state gets the same object and the random state its own construction would have
    left, so what is initialised after it (the head) is exactly what its own run initialises. Shared, not
    copied: these jobs only read it (to featurize, and to log it as the model's backbone)."""

    def __init__(self):
        self._built: dict[str, tuple[Any, tuple]] = {}

    def build(self, cfg):
        from .backbones import BACKBONES

        state = RandomStreams._capture()
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True, default=str).encode())
        digest.update(state[0].numpy().tobytes())
        digest.update(repr((state[1][1].tolist(), state[1][2:], state[2])).encode())
        key = digest.hexdigest()
        if key in self._built:
            backbone, after = self._built[key]
            torch.set_rng_state(after[0])
            np.random.set_state(after[1])
            random.setstate(after[2])
            return backbone
        backbone = BACKBONES.build(cfg)
        self._built[key] = (backbone, RandomStreams._capture())
        return backbone


def build_member(run: RunConfig, store, backbones: SharedBackbones | None = None) -> Member | None:
    """The job of `run` built as train.py builds it, or None when it cannot join a group (with the reason
    at debug level); a config that fails to build is left to its own job, which reports it."""
    from .assembly import build_module
    from .data.datamodule import DomainDataModule
    from .module import TransferModule
    from .plan import plan_run

    try:
        plan = plan_run(run, store)
        pl.seed_everything(run.seed, workers=True, verbose=False)
        raw = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
        module, datamodule, decision = build_module(plan, raw, TransferModule, backbones.build if backbones else None)
    except Exception as exc:  # the job itself reports it, with the CLI's one line
        log.debug("not fused (%s)", exc)
        return None
    reason = why_not_fusable(plan, decision)
    if reason is not None:
        log.debug("not fused: %s", reason)
        return None
    if not isinstance(module.backbone, CachedBackbone):
        return None
    return Member(plan, module, datamodule, raw, decision)


def prepare(runs: list[RunConfig]) -> int:
    """Train every group of two or more fusable runs among `runs` (a sweep's jobs, in order) and keep
    their outcomes for their jobs; returns how many runs were fused. Runs already finished under
    tracking.skip_done are left to their jobs, which skip them."""
    from .tracking import Store, config_hash, finished_run_with_hash

    candidates = [run for run in runs if run is not None and may_fuse(run)]
    if len(candidates) < 2:
        return 0
    groups: dict[str, list[Member]] = {}
    backbones = SharedBackbones()
    for run in candidates:
        store = Store.of(run.tracking)
        if run.tracking.skip_done and finished_run_with_hash(store, config_hash(run)):
            continue
        member = build_member(run, store, backbones)
        if member is not None:
            groups.setdefault(group_key(member.plan, member.module), []).append(member)
    fused = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        started = time.time()
        try:
            outcomes = train_group(members)
        except Exception as exc:  # a fault of the fused path itself: these jobs then train one by one, as before
            log.warning(
                "fused training of %d runs failed (%s: %s); they train one by one",
                len(members),
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            continue
        for outcome in outcomes:
            _outcomes[outcome.member.plan.config_hash] = outcome
        fused += len(members)
        log.info("fused %d runs on the same cached features: trained together in %.1f s", len(members), time.time() - started)
    return fused


def prepare_sweep(configs: list) -> int:
    """`prepare` for a Hydra sweep's composed job configs (the launcher's); a config that does not
    validate is left to its job, which reports it."""
    from omegaconf import open_dict

    from .config import validate
    from .console import quiet_libraries

    runs = []
    for config in configs:
        job = config.copy()
        with open_dict(job):
            del job["hydra"]
        try:
            runs.append(validate(job))
        except Exception as exc:  # the job reports it with the CLI's one line
            log.debug("not fused (%s)", exc)
            runs.append(None)
    if sum(run is not None and may_fuse(run) for run in runs) < 2:
        return 0
    quiet_libraries()
    return prepare(runs)
