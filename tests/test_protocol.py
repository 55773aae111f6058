"""Training-protocol knobs that make comparisons fair: fixed steps per epoch, the BatchNorm batch
composition shared by every method, the bottleneck, per-part learning rates, momentum type, the TLlib
schedules and loss scales, and the DANN paper's digit network."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose, tiny_run, validated_with
from torch import nn

from tlbench.adapt import ADAPTERS
from tlbench.adapt.coral import coral_loss, covariance
from tlbench.adapt.layers import DomainDiscriminator, dann_lambda, mk_mmd2, ramp_position
from tlbench.assembly import build_module
from tlbench.backbones import BACKBONES
from tlbench.config import OptimConfig, validate
from tlbench.data.base import InMemoryExamples
from tlbench.data.datamodule import DomainDataModule
from tlbench.data.loaders import FixedLengthLoader, TensorBatchLoader
from tlbench.errors import ConfigError
from tlbench.module import TransferModule
from tlbench.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from tlbench.plan import plan_run


def _images(n: int) -> InMemoryExamples:
    return InMemoryExamples(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) % 3)


# ----------------------------------------------------------- steps per epoch
def test_fixed_length_loader_cycles_a_short_stream_with_a_new_order_each_pass():
    loader = FixedLengthLoader(TensorBatchLoader(_images(10), 5, shuffle=True, drop_last=True, seed=0), length=6)
    batches = [images.view(-1).tolist() for images, _ in loader]
    assert len(batches) == len(loader) == 6
    passes = [sorted(sum(batches[i : i + 2], [])) for i in (0, 2, 4)]
    assert all(p == list(range(10)) for p in passes)  # every pass sees every example once
    assert sum(batches[0:2], []) != sum(batches[2:4], [])  # reshuffled between passes


def test_fixed_length_loader_repeats_an_epoch_exactly_and_differs_across_epochs():
    def epoch(e: int):
        loader = FixedLengthLoader(TensorBatchLoader(_images(10), 4, shuffle=True, drop_last=True, seed=3), length=5)
        loader.set_epoch(e)
        return [images.view(-1).tolist() for images, _ in loader]

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2)


def test_steps_per_epoch_is_the_same_for_every_label_budget(tmp_path, mlflow_uri):
    lengths = []
    for budget in ("data.labels_per_class=2", "data.labels_per_class=30"):
        run = tiny_run(tmp_path, mlflow_uri, ["trainer.steps_per_epoch=7", budget])
        datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=run.trainer.steps_per_epoch)
        lengths.append(sum(1 for _ in datamodule.train_dataloader()))
    assert lengths == [7, 7]


def test_steps_per_epoch_must_be_positive():
    with pytest.raises(ConfigError, match="trainer.steps_per_epoch"):
        validate(compose(["trainer.steps_per_epoch=0"]))


# ------------------------------------------------------- batch composition
def _module(tmp_path, uri, *extra):
    run = tiny_run(tmp_path, uri, list(extra))
    datamodule = DomainDataModule(run.data, run.seed)
    module, _, _ = build_module(plan_run(run), datamodule, TransferModule)
    return module


@pytest.mark.parametrize("adapt", ["source_only", "dann"])
def test_joint_and_separate_batches_normalise_differently_for_every_method(tmp_path, mlflow_uri, adapt):
    torch.manual_seed(0)
    images_s, images_t = torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8) * 0.2 + 0.8
    out = {}
    for composition in ("joint", "separate"):
        torch.manual_seed(1)
        module = _module(tmp_path, mlflow_uri, f"adapt={adapt}", f"batch_composition={composition}")
        out_step = module._forward_domains(images_s, images_t)
        features_s, features_t = out_step.features_s, out_step.features_t
        assert features_t is not None and features_t.shape == features_s.shape  # source_only forwards the target too
        out[composition] = features_s.detach()
    # The same source images get different features: in a joint batch BN pools both domains' statistics.
    assert not torch.allclose(out["joint"], out["separate"])


def test_source_composition_never_forwards_the_target_and_changes_bn_only_with_source(tmp_path, mlflow_uri):
    images_s = torch.rand(8, 1, 8, 8)
    stats = []
    for images_t in (None, torch.rand(8, 1, 8, 8) + 5):
        torch.manual_seed(1)
        module = _module(tmp_path, mlflow_uri, "adapt=source_only", "batch_composition=source")
        step = module._forward_domains(images_s, images_t)
        features_t, logits_t = step.features_t, step.logits_t
        assert features_t is None and logits_t is None
        stats.append(next(m for m in module.backbone.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.clone())
    assert torch.equal(*stats)  # the target batch never reached BatchNorm


@pytest.mark.parametrize(
    "overrides, composition",
    [
        (["freeze=linear_probe"], "source"),  # a fixed backbone and a plain linear head: the target changes nothing
        (["freeze=linear_probe", "head.dropout=0.5"], "joint"),  # dropout draws random numbers per forwarded example
        (["freeze=linear_probe", "head.bottleneck=8"], "joint"),  # the bottleneck's BatchNorm pools the batch
        (["freeze=full"], "joint"),  # the backbone's BatchNorm trains
        (["freeze=linear_probe", "adapt=dann"], "joint"),  # a method that uses the target
    ],
)
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_a_target_batch_is_drawn_only_where_it_can_change_the_run(tmp_path, mlflow_uri, overrides, composition):
    run = tiny_run(tmp_path, mlflow_uri, overrides)
    module, datamodule, _ = build_module(plan_run(run), DomainDataModule(run.data, run.seed, steps_per_epoch=2), TransferModule)
    assert module.batch_composition == composition
    batch = next(iter(datamodule.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert ("target" in batch) == (composition != "source")


def test_a_method_that_needs_the_target_cannot_use_source_composition(tmp_path, mlflow_uri):
    with pytest.raises(ConfigError, match="batch_composition=source"):
        _module(tmp_path, mlflow_uri, "adapt=dann", "batch_composition=source")


def test_unknown_batch_composition_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_composition"):
        validate(compose(["batch_composition=mixed"]))


# ---------------------------------------------------- bottleneck, lr groups
def test_bottleneck_feeds_the_adaptation_loss_and_the_classifier(tmp_path, mlflow_uri):
    module = _module(tmp_path, mlflow_uri, "adapt=dann", "head.bottleneck=16")
    assert module.head.in_features == 16
    assert module.adapter.discriminator.net[0].in_features == 16
    step = module._forward_domains(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))
    features_s, logits_s, features_t = step.features_s, step.logits_s, step.features_t
    assert features_s.shape == (4, 16) and features_t.shape == (4, 16) and logits_s.shape == (4, 10)


def test_param_groups_scale_backbone_head_and_adapter_learning_rates():
    a, b, c, d = (nn.Parameter(torch.zeros(1)) for _ in range(4))
    groups = param_groups([[a], [b]], [0.5, 1.0], {"head": ([c], 10.0), "adapter": ([d], 2.0)}, base_lr=0.01)
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"stage0": 0.005, "stage1": 0.01, "head": 0.1, "adapter": 0.02})


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_momentum_is_plain_or_nesterov_as_configured(nesterov):
    cfg = OptimConfig(name="sgd", momentum=0.9, nesterov=nesterov)
    optimizer = build_optimizer(cfg, [{"params": [nn.Parameter(torch.zeros(1))]}])
    assert optimizer.param_groups[0]["nesterov"] is nesterov


def test_inv_schedule_follows_absolute_steps_whatever_the_run_length():
    assert lr_factor("inv", 0.5, step=1000) == pytest.approx((1 + 0.001 * 1000) ** -0.75)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = build_scheduler(OptimConfig(scheduler="inv", inv_gamma=0.01, inv_power=0.5), optimizer, total_steps=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 + 0.01 * 3) ** -0.5)


def test_dann_schedule_anneals_over_progress():
    assert lr_factor("dann", 0.5) == pytest.approx((1 + 5.0) ** -0.75)


# ---------------------------------------------------------- λ ramp, losses
def test_ramp_in_absolute_steps_matches_tllib_warm_start():
    # TLlib: λ(i) = 2/(1+exp(−i/1000)) − 1, independent of the total number of steps.
    for step in (0, 500, 1000, 5000):
        expected = 2.0 / (1.0 + math.exp(-step / 1000)) - 1.0
        assert dann_lambda(ramp_position(0.123, step, 1000), gamma=1.0) == pytest.approx(expected)
    assert ramp_position(0.25, 999, None) == 0.25  # the paper's ramp follows progress


def test_discriminator_depth_one_is_the_papers_single_hidden_layer():
    disc = DomainDiscriminator(768, hidden=100, dropout=0.0, depth=1)
    linears = [m for m in disc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 100), (100, 1)]
    assert disc(torch.randn(5, 768)).shape == (5,)


def test_coral_tllib_normalisation_is_mean_squared_gaps_of_covariance_and_mean():
    torch.manual_seed(0)
    xs, xt = torch.randn(20, 6), torch.randn(30, 6) * 2 + 1
    gap = covariance(xs) - covariance(xt)
    expected = gap.pow(2).sum() / 36 + (xs.mean(0) - xt.mean(0)).pow(2).sum() / 6
    assert coral_loss(xs, xt, "tllib").item() == pytest.approx(expected.item(), rel=1e-6)
    assert coral_loss(xs, xt, "paper").item() == pytest.approx((gap.pow(2).sum() / (4 * 36)).item(), rel=1e-6)


def test_dan_tllib_normalisation_sums_the_kernels():
    torch.manual_seed(0)
    xs, xt = torch.randn(10, 4), torch.randn(10, 4) + 1
    node = {"name": "dan", "normalisation": "tllib"}
    dan = ADAPTERS.build(ADAPTERS.validate(node), num_classes=3, feature_dim=4)
    multipliers = dan.cfg.kernel_multipliers
    out = dan.loss(xs, xt, None, None, None, 0.5)
    assert out.loss.item() == pytest.approx(len(multipliers) * mk_mmd2(xs, xt, multipliers).item(), rel=1e-6)


@pytest.mark.parametrize("method", ["coral", "dan"])
def test_unknown_normalisation_is_a_config_error(method):
    with pytest.raises(ConfigError, match=r"adapt.normalisation: .*paper"):
        validated_with("adapt", {"name": method, "normalisation": "domainbed"})


# ------------------------------------------------------------------ network
@pytest.mark.parametrize("size,features", [(28, 768), (20, 192)])
def test_dann_mnist_has_the_papers_feature_size_and_no_batchnorm(size, features):
    backbone = BACKBONES.build(BACKBONES.validate({"family": "dann_mnist", "input_size": size}))
    assert backbone.out_features == features
    assert backbone(torch.randn(2, 3, size, size)).shape == (2, features)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())


def test_dann_paper_preset_composes_the_papers_recipe():
    run = validate(compose(["experiment=dann_paper_digits", "data=digits"]))
    assert (run.backbone.name, run.head.hidden, run.adapt.hidden, run.adapt.depth) == ("dann_mnist", [100, 100], 100, 1)
    assert (run.optim.name, run.optim.nesterov, run.optim.scheduler, run.optim.lr) == ("sgd", False, "dann", 0.01)
    assert run.trainer.steps_per_epoch is not None and run.batch_composition == "joint"


@pytest.mark.parametrize("preset", ["tllib_digits", "tllib_office31"])
def test_tllib_presets_compose_with_bottleneck_and_inv_schedule(preset):
    run = validate(compose([f"experiment={preset}", "adapt=dann_tllib"]))
    assert run.head.bottleneck == 256 and run.optim.scheduler == "inv" and run.optim.nesterov
    assert run.adapt.ramp_steps == 1000 and run.adapt.batch_norm


# -------------------------------------------------------- domain-specific BN
def test_domain_bn_normalises_each_domain_with_its_own_copy(tmp_path, mlflow_uri):
    from tlbench.domain_bn import DomainSpecificBatchNorm, batchnorm_domain

    module = _module(tmp_path, mlflow_uri, "adapt=dann", "batch_composition=domain_bn")
    norms = [m for m in module.backbone.modules() if isinstance(m, DomainSpecificBatchNorm)]
    assert len(norms) == 3  # small_cnn has one BatchNorm per stage
    module.train()
    images_s, images_t = torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8) * 0.1 + 0.9
    module._forward_domains(images_s, images_t)
    first = norms[0]
    # the source copy saw only source images, the target copy only target images
    assert not torch.allclose(first.source.running_mean, first.target.running_mean)
    only_source = _module(tmp_path, mlflow_uri, "adapt=dann", "batch_composition=domain_bn")
    only_source.load_state_dict(module.state_dict())
    with batchnorm_domain(only_source, "source"):
        only_source.eval()
        out_source = only_source.features(only_source.preprocess(images_t))
    with batchnorm_domain(only_source, "target"):
        out_target = only_source.features(only_source.preprocess(images_t))
    assert not torch.allclose(out_source, out_target)


def test_domain_bn_with_adabn_is_a_config_error(tmp_path, mlflow_uri):
    with pytest.raises(ConfigError, match="domain_bn"):
        _module(tmp_path, mlflow_uri, "adapt=adabn", "batch_composition=domain_bn")


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_domain_bn_run_trains_and_records_its_composition(tmp_path, mlflow_uri):
    from tlbench.runs import load_runs
    from tlbench.train import train

    train(tiny_run(tmp_path, mlflow_uri, ["adapt=coral", "batch_composition=domain_bn"]))
    runs = load_runs(mlflow_uri)
    assert runs["status"].tolist() == ["FINISHED"]
    assert runs["tags.batch_composition"].tolist() == ["domain_bn"] and runs["params.batch_composition"].tolist() == ["domain_bn"]
    assert "domain_bn" in runs["run_name"].iloc[0].split(" · ")  # a non-default composition is in the name


def test_a_split_streamed_from_disk_is_a_reason_not_to_cache_and_in_memory_ones_are_not():
    from tlbench.data.base import DomainSplits
    from tlbench.data.datamodule import PositionLabelled
    from tlbench.feature_cache import streamed

    memory = InMemoryExamples(torch.zeros(4, 2), torch.zeros(4))
    in_memory = DomainSplits("a", memory, memory, memory, ["x"])
    on_disk = DomainSplits("folder", PositionLabelled(memory), memory, memory, ["x"])
    assert streamed([in_memory]) is None
    assert streamed([in_memory, on_disk]) == "feature caching needs in-memory splits; folder is streamed from disk"
