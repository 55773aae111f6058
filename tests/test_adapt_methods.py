"""Every registered adaptation method, built from its conf/adapt yaml, trains end to end on a tiny
backbone; AdaBN's statistics re-estimation; config validation errors."""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import compose, validated_with
from omegaconf import OmegaConf
from torch import nn

from tlbench.adapt import ADAPTERS
from tlbench.adapt.base import needs_of
from tlbench.adapt.layers import DomainDiscriminator, dann_lambda
from tlbench.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "adapt"
YAMLS = sorted(CONF_DIR.glob("*.yaml"))
#: Method yamls are named after the method and hold its defaults; recipe variants (`<method>_<recipe>`,
#: e.g. dann_paper_digits) extend it (`defaults: [<method>]`) with a published recipe's values.
METHOD_YAMLS = [p for p in YAMLS if "defaults" not in OmegaConf.load(p)]
RECIPE_YAMLS = [p for p in YAMLS if p not in METHOD_YAMLS]
NUM_CLASSES, FEATURE_DIM = 3, 4


def tiny_backbone(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(dropout) if dropout else nn.Identity(),
        nn.Conv2d(6, FEATURE_DIM, 3, padding=1),
        nn.BatchNorm2d(FEATURE_DIM),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def load(path: Path):
    """The adapt node as `adapt=<stem>` composes it (recipe variants inherit their method's values)."""
    return compose([f"adapt={path.stem}"]).adapt


def test_every_registered_method_has_a_yaml_named_after_it():
    assert sorted(p.stem for p in METHOD_YAMLS) == ADAPTERS.choices()


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.stem)
def test_recipe_yaml_is_a_variant_of_a_registered_method(path):
    raw = OmegaConf.load(path)
    (base,) = [d for d in raw.defaults if d != "_self_"]
    assert path.stem.startswith(base + "_") and CONF_DIR / f"{base}.yaml" in METHOD_YAMLS
    changes = {k: v for k, v in OmegaConf.to_container(raw).items() if k != "defaults"}
    base_values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{base}.yaml"))
    assert changes and all(base_values[k] != v for k, v in changes.items()), "list only what the recipe changes"
    node = compose([f"adapt={path.stem}"]).adapt
    ADAPTERS.validate(node)  # every key is one of the method's hyperparameters
    assert OmegaConf.to_container(node) == {**base_values, **changes}


@pytest.mark.parametrize("path", METHOD_YAMLS, ids=lambda p: p.stem)
def test_yaml_lists_every_hyperparameter_with_its_default(path):
    node = load(path)
    schema = ADAPTERS.entry(node.name).schema
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    assert OmegaConf.to_container(node) == defaults


class TinyModel(nn.Module):
    """What adapter hooks receive: `features` and `head`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.features, self.head = backbone, head


def _train_step(node, progress: float = 0.5):
    torch.manual_seed(0)
    if "threshold" in node:  # every example passes the confidence test, so the loss is not trivially 0
        node = OmegaConf.merge(node, {"threshold": 0.0})
    if "source_model" in node:
        node = OmegaConf.merge(node, {"source_model": "runs:/not-read-here"})
    backbone, head = tiny_backbone(), nn.Linear(FEATURE_DIM, NUM_CLASSES)
    adapter = ADAPTERS.build(node, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM, num_domains=2)  # two source domains below
    needs = needs_of(ADAPTERS.validate(node))
    images_s, images_t = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8) * 2 + 1
    labels_s = torch.randint(0, NUM_CLASSES, (8,))
    extra = {}
    if adapter.runs_before_epoch:
        adapter.before_epoch(TinyModel(backbone, head), [images_t[:5], images_t[5:]])
    if needs.target_index:
        extra["target_index"] = torch.arange(8)
    if needs.domain_index:  # two source domains of four examples each
        extra["domain_index"] = torch.tensor([0, 1] * 4)
    if needs.network:
        extra.update(inputs_s=images_s, network=nn.Sequential(backbone, head))
    if needs.target:
        views = [images_s, images_t] + ([images_t.flip(-1)] if needs.strong_view else [])
        features = backbone(torch.cat(views)).split(8)
        features_s, features_t = features[0], features[1]
        logits_s, logits_t = head(features_s), head(features_t)
        if needs.strong_view:
            extra["logits_t_strong"] = head(features[2])
    else:
        features_s, features_t = backbone(images_s), None
        logits_s, logits_t = head(features_s), None
    # step: halfway through a 1,000-step run, so ramps in absolute steps (TLlib recipes) are past 0 too
    source = (features_s, logits_s, labels_s) if needs.source else (None, None, None)
    out = adapter.loss(source[0], features_t, source[1], logits_t, source[2], progress, step=int(progress * 1000), **extra)
    return backbone, head, adapter, F.cross_entropy(logits_s, labels_s), out


def _grads(params):
    return [p.grad for p in params]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_one_training_step_is_finite_and_reaches_the_backbone(path):
    backbone, head, adapter, ce, out = _train_step(load(path))
    needs = needs_of(ADAPTERS.validate(load(path)))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for key, value in out.logs.items():
        assert torch.is_tensor(value) and value.dim() == 0 and torch.isfinite(value), key
    if needs.target or needs.domain_index:
        # the method's loss on its own must move the backbone (and any discriminator): target-reading
        # methods through the target batch, domain-generalisation methods through the two source domains
        out.loss.backward(retain_graph=True)
        grads = _grads(backbone.parameters())
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0
        for name, p in adapter.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    else:
        assert out.loss.item() == 0.0 and not list(adapter.parameters())
    params = [*backbone.parameters(), *head.parameters(), *adapter.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    optimizer.zero_grad()
    before = [p.detach().clone() for p in backbone.parameters()]
    (ce + out.loss).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(b, p) for b, p in zip(before, backbone.parameters()))


@pytest.mark.parametrize("name", ["dann", "cdan", "cdan_e"])
def test_adversarial_methods_train_a_discriminator(name):
    """The adapter's own parameters learn to tell separable domains apart: its domain loss falls and its
    domain accuracy rises (the features carry no gradient here, so reversal plays no part)."""
    torch.manual_seed(0)
    adapter = ADAPTERS.build({"name": name, "hidden": 16, "dropout": 0.0}, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM)
    discriminators = [m for m in adapter.modules() if isinstance(m, DomainDiscriminator)]
    assert len(discriminators) == 1 and discriminators[0].net[0].out_features == 16
    features_s, features_t = torch.randn(32, FEATURE_DIM) + 2, torch.randn(32, FEATURE_DIM) - 2
    logits_s, logits_t = torch.randn(32, NUM_CLASSES), torch.randn(32, NUM_CLASSES)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
    losses, accuracies = [], []
    for _ in range(40):
        out = adapter.loss(features_s, features_t, logits_s, logits_t, None, progress=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.logs["transfer_loss"].item())
        accuracies.append(float(out.logs["domain_acc"]))
    assert losses[-1] < losses[0] / 2 and accuracies[-1] > 0.9


def test_dann_backbone_gradient_is_reversed_and_scaled_by_lambda():
    adapter = ADAPTERS.build({"name": "dann", "hidden": 8}, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM).eval()
    features = torch.randn(10, FEATURE_DIM, requires_grad=True)
    out = adapter.loss(features[:5], features[5:], None, None, None, progress=0.3)
    (reversed_grad,) = torch.autograd.grad(out.loss, features)
    labels = torch.cat([torch.ones(5), torch.zeros(5)])
    plain = F.binary_cross_entropy_with_logits(adapter.discriminator(features), labels)
    (plain_grad,) = torch.autograd.grad(plain, features)
    torch.testing.assert_close(reversed_grad, -dann_lambda(0.3) * plain_grad)
    assert out.logs["dann_lambda"].item() == pytest.approx(dann_lambda(0.3))


@pytest.mark.parametrize("name", ["cdan", "cdan_e"])
def test_cdan_chooses_randomized_map_for_large_inputs(name):
    small = ADAPTERS.build({"name": name}, num_classes=3, feature_dim=4)
    assert small.random_map is None and small.discriminator.net[0].in_features == 12
    large = ADAPTERS.build({"name": name}, num_classes=10, feature_dim=512)
    assert large.random_map is not None and large.discriminator.net[0].in_features == 1024
    forced = ADAPTERS.build({"name": name, "randomized": True, "randomized_dim": 16}, num_classes=3, feature_dim=4)
    assert forced.discriminator.net[0].in_features == 16
    _, _, _, _, out = _train_step(OmegaConf.create({"name": name, "randomized": True, "randomized_dim": 16}))
    assert torch.isfinite(out.loss)


# --- AdaBN ------------------------------------------------------------------------------------


def _batch_stats(inputs: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative average over batches of per-channel batch mean and unbiased batch variance."""
    means, variances = [], []
    for x in inputs:
        flat = x.detach().double().numpy().transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
        means.append(flat.mean(axis=1))
        variances.append(flat.var(axis=1, ddof=1))
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def _adabn():
    return ADAPTERS.build(load(CONF_DIR / "adabn.yaml"), num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM)


def test_adabn_sets_target_statistics_and_changes_nothing_else():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.BatchNorm2d(3), tiny_backbone())
    backbone.train()
    backbone[1][1].eval()  # a frozen-statistics BN: recomputed anyway, but its mode must survive
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    norms[1].momentum = 0.3
    params_before = copy.deepcopy(backbone.state_dict(keep_vars=False))
    modes_before = {name: m.training for name, m in backbone.named_modules()}
    targets = [torch.randn(6, 3, 5, 5) * 3 + 2 for _ in range(3)]
    seen = {m: [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].clone())) for m in norms]

    _adabn().before_evaluation(backbone, iter(targets))
    for h in hooks:
        h.remove()

    # first BN sees the raw images: its statistics are the target images' own, computed independently
    raw = torch.cat(targets).double().numpy()
    np.testing.assert_allclose(norms[0].running_mean.numpy(), raw.mean(axis=(0, 2, 3)), rtol=1e-5)
    # every BN: cumulative average over the target batches of what it saw
    for m in norms:
        mean, var = _batch_stats(seen[m])
        np.testing.assert_allclose(m.running_mean.numpy(), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m.running_var.numpy(), var, rtol=1e-4, atol=1e-6)
        assert m.num_batches_tracked.item() == 3 and len(seen[m]) == 3
    assert norms[0].momentum == 0.1 and norms[1].momentum == 0.3
    assert {name: m.training for name, m in backbone.named_modules()} == modes_before
    after = backbone.state_dict()
    for key, value in params_before.items():
        stat = key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
        assert torch.equal(value, after[key]) != stat, key


def test_adabn_ignores_dropout_and_keeps_stats_without_batches():
    torch.manual_seed(0)
    with_dropout = tiny_backbone(dropout=0.9)
    without = tiny_backbone()
    without.load_state_dict(with_dropout.state_dict())
    targets = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    _adabn().before_evaluation(with_dropout, targets)
    _adabn().before_evaluation(without, targets)
    for a, b in zip(with_dropout.state_dict().values(), without.state_dict().values()):
        torch.testing.assert_close(a, b)
    before = copy.deepcopy(without.state_dict())
    _adabn().before_evaluation(without, [])
    for key, value in before.items():
        assert torch.equal(value, without.state_dict()[key]), key


def test_adabn_accepts_image_label_tuples():
    backbone = tiny_backbone()
    images = torch.randn(5, 3, 4, 4) + 4
    _adabn().before_evaluation(backbone, [(images, torch.zeros(5))])
    bn = backbone[1]
    np.testing.assert_allclose(bn.running_mean.numpy(), _batch_stats([backbone[0](images)])[0], rtol=1e-4, atol=1e-6)


# --- config validation ------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_unknown_key_is_a_config_error(path):
    node = {**OmegaConf.to_container(load(path)), "not_a_key": 1}
    with pytest.raises(ConfigError, match="not_a_key"):
        ADAPTERS.validate(node)


@pytest.mark.parametrize(
    "node",
    [
        {"name": "dann", "trade_off": "lots"},
        {"name": "dann", "hidden": 1.5},
        {"name": "cdan", "randomized": "sometimes"},
        {"name": "dan", "kernel_multipliers": "wide"},
        {"name": "mcc", "temperature": [1.0]},
        {"name": "coral", "trade_off": {"a": 1}},
        {"name": "no_such_method"},
    ],
)
def test_wrong_type_or_name_is_a_config_error(node):
    with pytest.raises(ConfigError):
        ADAPTERS.validate(node)


@pytest.mark.parametrize("node", [{"name": "mcc", "temperature": 0.0}, {"name": "dan", "kernel_multipliers": [1.0, -2.0]}])
def test_impossible_values_are_a_config_error_naming_the_key(node):
    key = next(k for k in node if k != "name")
    with pytest.raises(ConfigError, match=rf"adapt\.{key}: .*must be > 0"):
        validated_with("adapt", node)


def test_validated_configs_are_typed_dataclasses():
    typed = ADAPTERS.validate({"name": "cdan_e", "trade_off": 2})
    assert dataclasses.is_dataclass(typed) and typed.trade_off == 2.0 and typed.name == "cdan_e"
