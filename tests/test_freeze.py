"""Every freezing schedule, built from its conf/freeze yaml, trained with the real TransferModule and
Lightning Trainer on a 4-stage toy backbone: per epoch exactly the expected stages get gradients and
change, optimizer groups carry the expected LRs, BatchNorm statistics/affine follow bn_policy.
Plus L2-SP against a hand computation, and config validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import validated_with
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlbench.adapt import ADAPTERS
from tlbench.backbones.base import Backbone, Preprocessing
from tlbench.config import OptimConfig
from tlbench.errors import ConfigError
from tlbench.freeze import SCHEDULES
from tlbench.module import TransferModule

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "freeze"
YAMLS = sorted(CONF_DIR.glob("*.yaml"))
NUM_STAGES, WIDTH, NUM_CLASSES, SIZE = 4, 4, 3, 8
EPOCHS, BASE_LR = 4, 0.1
ALL = set(range(NUM_STAGES))

# Knobs set so that each schedule's behaviour shows within 4 epochs (and negative k is exercised).
OVERRIDES = {
    "freeze_first_k": {"k": -1},
    "gradual": {"every_n_epochs": 1, "unfrozen_lr_scale": 0.5},
    "lp_ft": {"probe_epochs": 2, "unfrozen_lr_scale": 0.25},
    "discriminative": {"decay": 0.5},
}
# Schedule → (trainable stages per epoch, stage LR scales), written out by hand for 4 stages × 4 epochs.
EXPECTED = {
    "full": ([ALL] * 4, [1.0] * 4),
    "scratch": ([ALL] * 4, [1.0] * 4),
    "linear_probe": ([set()] * 4, [1.0] * 4),
    "freeze_first_k": ([{3}] * 4, [1.0] * 4),
    "gradual": ([set(), {3}, {2, 3}, {1, 2, 3}], [0.5] * 4),
    "discriminative": ([ALL] * 4, [0.5**4, 0.5**3, 0.5**2, 0.5]),
    "lp_ft": ([set(), set(), ALL, ALL], [0.25] * 4),
}


# --------------------------------------------------------------------------- fixtures
class TinyBackbone(Backbone):
    """NUM_STAGES × (conv → BN → ReLU), then global pooling (no parameters outside the stages)."""

    def __init__(self):
        super().__init__()
        self.preprocessing = Preprocessing(input_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)
        self.out_features = WIDTH
        self.stage_modules = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 if i == 0 else WIDTH, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU()) for i in range(NUM_STAGES)
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        for stage in self.stage_modules:
            x = stage(x)
        return self.pool(x)


class PairedImages(Dataset):
    def __init__(self, images_s, labels_s, images_t):
        self.images_s, self.labels_s, self.images_t = images_s, labels_s, images_t

    def __len__(self):
        return len(self.labels_s)

    def __getitem__(self, i):
        return {"source": (self.images_s[i], self.labels_s[i]), "target": self.images_t[i]}


class TinyData(pl.LightningDataModule):
    """16 random uint8 images per domain; train batches of 8, three (x, y) evaluation loaders."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x_s = torch.randint(0, 256, (16, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
        self.x_t = torch.randint(0, 256, (16, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
        self.y = torch.randint(0, NUM_CLASSES, (16,), generator=g)

    def train_dataloader(self):
        return DataLoader(PairedImages(self.x_s, self.y, self.x_t), batch_size=8, shuffle=False)

    def val_dataloader(self):  # val source, val target, target test
        return [DataLoader(TensorDataset(x, self.y), batch_size=8) for x in (self.x_s, self.x_t, self.x_t)]


def stage_of(name: str) -> int:
    return int(name.split(".")[1])  # "stage_modules.<i>.<layer>.<param>"


def is_bn(backbone: nn.Module, name: str) -> bool:
    return isinstance(backbone.get_submodule(name.rsplit(".", 1)[0]), nn.BatchNorm2d)


class Recorder(pl.Callback):
    """Per epoch: LRs at the start, trainable flags and BN modes during steps, which params got
    gradients, and which params/buffers changed between the start and the end of the epoch."""

    def __init__(self):
        self.epochs: list[dict] = []

    def _snapshot(self, module):
        return {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}, [p.detach().clone() for p in module.head.parameters()]

    def on_train_epoch_start(self, trainer, module):
        groups = trainer.optimizers[0].param_groups
        self.epochs.append(
            {
                "start": self._snapshot(module),
                "lrs": {g["name"]: g["lr"] for g in groups},
                "group_params": {g["name"]: [id(p) for p in g["params"]] for g in groups},
                "grads": set(),
                "bn_training": set(),
            }
        )

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        for name, sub in module.backbone.named_modules():
            if isinstance(sub, nn.BatchNorm2d):
                self.epochs[-1]["bn_training"].add((stage_of(name), sub.training))

    def on_after_backward(self, trainer, module):
        for name, p in module.backbone.named_parameters():
            if p.grad is not None:
                self.epochs[-1]["grads"].add(name)

    def on_train_epoch_end(self, trainer, module):
        self.epochs[-1]["end"] = self._snapshot(module)


def build_schedule(name: str, **extra):
    node = OmegaConf.merge(OmegaConf.load(CONF_DIR / f"{name}.yaml"), OVERRIDES.get(name, {}), extra)
    return SCHEDULES.build(node)


def fit(schedule, epochs: int = EPOCHS):
    pl.seed_everything(0, verbose=False)
    backbone = TinyBackbone()
    initial = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    adapter = ADAPTERS.build({"name": "source_only"}, num_classes=NUM_CLASSES, feature_dim=WIDTH)
    optim = OptimConfig(name="sgd", lr=BASE_LR, weight_decay=1e-3, momentum=0.9, scheduler="constant")
    module = TransferModule(backbone, nn.Linear(WIDTH, NUM_CLASSES), adapter, schedule, optim, NUM_CLASSES)
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=TinyData())
    return module, recorder, initial


# ------------------------------------------------------------------ yaml ↔ registry
def test_every_registered_schedule_has_a_yaml_and_expectations():
    assert sorted(p.stem for p in YAMLS) == SCHEDULES.choices()
    for path in YAMLS:
        assert OmegaConf.load(path).name == path.stem
        assert path.stem in EXPECTED, f"add the expected per-epoch behaviour of '{path.stem}' to EXPECTED"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_lists_every_field_with_its_default(path):
    node = OmegaConf.load(path)
    defaults = OmegaConf.to_container(OmegaConf.structured(SCHEDULES.entry(node.name).schema))
    assert OmegaConf.to_container(node) == defaults
    assert {"name", "bn_policy", "l2sp_alpha"} <= set(defaults)


def test_only_scratch_skips_pretrained_weights():
    assert {p.stem: build_schedule(p.stem).uses_pretrained for p in YAMLS} == {p.stem: p.stem != "scratch" for p in YAMLS}


# ------------------------------------------------------------ training, per epoch
CASES = [(p.stem, None) for p in YAMLS] + [
    ("gradual", "train"),
    ("gradual", "frozen_affine"),
    ("lp_ft", "train"),
    ("lp_ft", "frozen_affine"),
    ("freeze_first_k", "frozen_affine"),
    ("full", "frozen_affine"),
    ("linear_probe", "train"),
]


@pytest.mark.parametrize("name,bn_policy", CASES, ids=[f"{n}-{b or 'default'}" for n, b in CASES])
def test_schedule_trains_exactly_the_expected_stages(name, bn_policy):
    schedule = build_schedule(name, **({"bn_policy": bn_policy} if bn_policy else {}))
    policy = schedule.bn_policy
    per_epoch, scales = EXPECTED[name]
    module, recorder, _ = fit(schedule)
    assert len(recorder.epochs) == EPOCHS
    stage_param_ids = [[id(p) for p in params] for params in module.backbone.stage_parameters()]

    for epoch, (record, trainable) in enumerate(zip(recorder.epochs, per_epoch)):
        where = f"{name}/{policy} epoch {epoch}"
        # optimizer: one group per stage at base × scale, head at base (constant LR schedule)
        expected_lrs = {f"stage{i}": BASE_LR * s for i, s in enumerate(scales)} | {"head": BASE_LR}
        assert record["lrs"] == pytest.approx(expected_lrs), where
        assert [record["group_params"][f"stage{i}"] for i in range(NUM_STAGES)] == stage_param_ids

        before, head_before = record["start"]
        after, head_after = record["end"]
        assert any(not torch.equal(a, b) for a, b in zip(head_before, head_after)), f"{where}: head did not train"
        stats_move = lambda s: policy == "train" or (policy == "frozen_stats" and s in trainable)  # noqa: E731
        for key in before:
            stage, changed = stage_of(key), not torch.equal(before[key], after[key])
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert changed == stats_move(stage), f"{where}: {key} changed={changed}"
                continue
            learns = stage in trainable and not (is_bn(module.backbone, key) and policy == "frozen_affine")
            assert (key in record["grads"]) == learns, f"{where}: {key} got grad={key in record['grads']}"
            assert changed == learns, f"{where}: {key} changed={changed}"
        assert record["bn_training"] == {(s, stats_move(s)) for s in range(NUM_STAGES)}, where


def test_always_frozen_prefix_matches_the_schedules():
    prefixes = {p.stem: build_schedule(p.stem).always_frozen_prefix(NUM_STAGES, EPOCHS) for p in YAMLS}
    assert prefixes == {
        "full": 0,
        "scratch": 0,
        "discriminative": 0,
        "lp_ft": 0,
        "linear_probe": 4,
        "freeze_first_k": 3,
        "gradual": 1,
    }
    assert build_schedule("lp_ft").always_frozen_prefix(NUM_STAGES, max_epochs=2) == NUM_STAGES


# ----------------------------------------------------------------- schedule rules
@pytest.mark.parametrize("k,trainable", [(0, ALL), (1, {1, 2, 3}), (4, set()), (-1, {3}), (-3, {1, 2, 3}), (-4, ALL)])
def test_freeze_first_k_counts_from_the_stem_or_from_the_end(k, trainable):
    assert build_schedule("freeze_first_k", k=k).trainable_stages(0, NUM_STAGES) == trainable


@pytest.mark.parametrize("k", [5, -5])
def test_freeze_first_k_beyond_the_backbone_is_a_clear_config_error(k):
    schedule = build_schedule("freeze_first_k", k=k)
    with pytest.raises(ConfigError, match=r"freeze\.k: .*4 stages"):
        schedule.trainable_stages(0, NUM_STAGES)


def test_gradual_unfreezes_one_stage_every_n_epochs_top_down():
    schedule = build_schedule("gradual", every_n_epochs=2)
    got = [schedule.trainable_stages(e, 3) for e in range(9)]
    assert got == [set(), set(), {2}, {2}, {1, 2}, {1, 2}, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}]


def test_discriminative_decays_lr_geometrically_toward_the_stem():
    scales = build_schedule("discriminative", decay=0.7).stage_lr_scales(3)
    assert scales == pytest.approx([0.7**3, 0.7**2, 0.7])


# -------------------------------------------------------------------------- L2-SP
def test_l2sp_equals_hand_computation_and_pulls_toward_start():
    alpha = 0.3
    schedule = build_schedule("full", l2sp_alpha=alpha)
    torch.manual_seed(0)
    backbone = TinyBackbone()
    start = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    assert schedule.regularizer(backbone).item() == 0.0  # first call captures w0 = current weights

    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p))
    backbone.stage_modules[0].requires_grad_(False)  # frozen stages are left out of the sum
    expected = alpha / 2 * sum(((p.detach() - start[n]) ** 2).sum() for n, p in backbone.named_parameters() if stage_of(n) != 0)
    value = schedule.regularizer(backbone)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.equal(schedule.l2sp.reference[n], start[n]) for n in start), "w0 must be a detached copy"

    value.backward()
    for n, p in backbone.named_parameters():
        if stage_of(n) == 0:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, alpha * (p.detach() - start[n]))
    with torch.no_grad():
        for p in backbone.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    assert schedule.regularizer(backbone).item() < value.item()


def test_l2sp_off_by_default_and_silent_when_nothing_trains():
    backbone = TinyBackbone()
    assert all(build_schedule(p.stem).regularizer(backbone) is None for p in YAMLS)
    probe = build_schedule("linear_probe", l2sp_alpha=1.0)
    backbone.requires_grad_(False)
    assert probe.regularizer(backbone) is None


def test_l2sp_in_training_anchors_at_the_starting_weights_and_limits_drift():
    def drift(alpha):
        schedule = build_schedule("full", l2sp_alpha=alpha)
        module, _, initial = fit(schedule, epochs=2)
        if alpha:
            for n, w0 in schedule.l2sp.reference.items():
                assert torch.equal(w0, initial[n]), f"w0 of {n} is not the starting weight"
        weights = dict(module.backbone.named_parameters())
        return sum(((weights[n].detach() - initial[n]) ** 2).sum().item() for n in weights)

    assert drift(5.0) < 0.5 * drift(0.0)


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    "node,key",
    [
        ({"name": "gradual", "every_n_epoch": 2}, "every_n_epoch"),  # unknown key
        ({"name": "full", "l2sp_beta": 0.1}, "l2sp_beta"),  # the head term is not offered
        ({"name": "freeze_first_k", "k": "two"}, "k"),  # wrong type
        ({"name": "discriminative", "decay": "fast"}, "decay"),
        ({"name": "discriminative", "decay": 0.0}, "decay"),
        ({"name": "discriminative", "decay": 1.5}, "decay"),
        ({"name": "gradual", "every_n_epochs": 0}, "every_n_epochs"),
        ({"name": "gradual", "unfrozen_lr_scale": -1.0}, "unfrozen_lr_scale"),
        ({"name": "lp_ft", "probe_epochs": -1}, "probe_epochs"),
        ({"name": "full", "l2sp_alpha": -0.1}, "l2sp_alpha"),
        ({"name": "freezeall"}, "name"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(node, key):
    with pytest.raises(ConfigError, match=rf"freeze\.{key}\b"):
        validated_with("freeze", node)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_bad_bn_policy_is_a_config_error_for_every_schedule(path):
    node = OmegaConf.merge(OmegaConf.load(path), {"bn_policy": "frozen"})
    with pytest.raises(ConfigError, match=r"freeze\.bn_policy: .*train, frozen_stats, frozen_affine"):
        validated_with("freeze", node)
