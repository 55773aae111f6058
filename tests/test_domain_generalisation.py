"""Domain generalisation: several source domains in one run (data.sources), DomainBed-style data sets
built from Fashion-MNIST, and the DG methods' losses against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import compose, tiny_run

from tlbench.adapt import ADAPTERS
from tlbench.adapt.base import needs_of
from tlbench.adapt.coral import coral_loss
from tlbench.adapt.irm import irm_penalty
from tlbench.adapt.mixup import cross_domain_partners, mixup_loss
from tlbench.adapt.mldg import meta_split, mldg_objective
from tlbench.adapt.source_alignment import pairwise_alignment
from tlbench.config import DataConfig, validate
from tlbench.data import build_domain
from tlbench.data.datamodule import DomainDataModule
from tlbench.data.dg_fashion import colored, rotate
from tlbench.errors import ConfigError
from tlbench.tracking import config_hash

SOURCES = "data.sources=[rotated_fashion:0,rotated_fashion:15,rotated_fashion:30]"


def small(n: int = 600) -> DataConfig:
    return DataConfig(synthetic_size=n)


def test_rotated_domains_are_disjoint_rotations_of_fashion_images():
    zero, ninety = build_domain("rotated_fashion:0", small(), 0), build_domain("rotated_fashion:15", small(), 0)
    assert zero.train.images.shape[1:] == (1, 28, 28) and len(zero.train) + len(zero.val) + len(zero.test) == 600
    assert zero.fingerprint != ninety.fingerprint
    a = {bytes(x.numpy()) for x in zero.train.images}
    assert not any(bytes(rotate(x[0].numpy()[None], 0)[0].numpy()) in a for x in ninety.train.images[:50])  # dealt, not shared
    square = np.zeros((1, 28, 28), dtype=np.uint8)
    square[0, 2:6, 12:16] = 255  # a block at the top centre goes to the left edge under a 90° turn
    turned = rotate(square, 90)[0, 0]
    assert turned[12:16, 2:6].float().mean() > 200 and turned[:8, 10:18].float().mean() < 10


def test_colored_domains_follow_domainbeds_colour_rule():
    generator = np.random.default_rng(0)
    images = np.full((20000, 4, 4), 200, dtype=np.uint8)
    classes = np.arange(20000) % 10
    for flip in (0.1, 0.9):
        coloured, labels = colored(images, classes, flip, generator)
        colour = (coloured[:, 1].sum((1, 2)) > 0).long()
        assert abs((colour == labels).float().mean().item() - (1 - flip)) < 0.02  # colour agrees with the label 1 − e
        assert abs((labels == torch.from_numpy(classes >= 5).long()).float().mean().item() - 0.75) < 0.02  # 25 % label noise
        assert (coloured[:, 2] == 0).all() and ((coloured[:, 0] > 0) ^ (coloured[:, 1] > 0)).all()


def test_unknown_domain_of_a_dg_family_is_one_line():
    with pytest.raises(ConfigError, match=r"'rotated_fashion:20' is not a domain.*rotated_fashion:15"):
        build_domain("rotated_fashion:20", small(), 0)


def test_several_sources_pool_with_domain_indices_per_domain_budgets_and_the_target_left_out():
    run = validate(compose(["backbone=small_cnn", SOURCES, "data.target=rotated_fashion:15", "data.synthetic_size=600", "data.labels_per_class=3"]))
    datamodule = DomainDataModule(run.data, run.seed)
    assert [d.name for d in datamodule.source_domains] == ["rotated_fashion:0", "rotated_fashion:30"]  # the target is not a source
    assert datamodule.target.name == "rotated_fashion:15"
    train = datamodule.source_train
    assert train.domains.bincount().tolist() == [30, 30]  # 3 labels per class in each of the two domains
    for d in (0, 1):
        assert train.labels[train.domains == d].bincount().tolist() == [3] * 10
    assert set(datamodule.source_val.domains.tolist()) == {0, 1}  # training-domain validation: pooled source val


def test_single_source_configs_hash_as_before():
    plain = validate(compose(["backbone=small_cnn"]))
    assert config_hash(plain) == config_hash(validate(compose(["backbone=small_cnn", "data.sources=null"])))
    several = validate(compose(["backbone=small_cnn", SOURCES, "data.target=rotated_fashion:75"]))
    assert config_hash(several) != config_hash(validate(compose(["backbone=small_cnn", "data.target=rotated_fashion:75"])))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.sources=[rotated_fashion:0]", "data.target=rotated_fashion:0"], "no source domain left"),
        (["data.sources=[rotated_fashion:0,rotated_fashion:0]", "data.target=rotated_fashion:15"], "listed twice"),
        (["data.sources=[rotated_fashion:0,colored_fashion:0.1]", "data.target=rotated_fashion:15"], "different classes"),
    ],
)
def test_bad_source_lists_are_one_line(overrides, message):
    """A list with nothing left or a domain twice is refused by validation, before any data is built; a
    class mismatch when the domains are built."""
    with pytest.raises(ConfigError, match=message):
        run = validate(compose(["backbone=small_cnn", "data.synthetic_size=300", *overrides]))
        DomainDataModule(run.data, run.seed)


def test_irm_penalty_matches_the_gradient_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0], [2.0, -1.0]])
    labels = torch.tensor([0, 1, 0, 0])

    def grad(z, y):  # d/dw CE(w·z, y) at w = 1: mean of Σ_k p_k z_k − z_y
        p = z.softmax(1)
        return ((p * z).sum(1) - z[torch.arange(len(y)), y]).mean()

    expected = grad(logits[::2], labels[::2]) * grad(logits[1::2], labels[1::2])
    assert torch.allclose(irm_penalty(logits, labels), expected)
    adapter = ADAPTERS.build({"name": "irm", "trade_off": 10.0, "anneal_steps": 5}, num_classes=2, feature_dim=2)
    domains = torch.tensor([0, 0, 0, 0])
    assert torch.allclose(adapter.loss(None, None, logits, None, labels, 0.5, step=5, domain_index=domains).loss, 10 * expected)
    assert torch.allclose(adapter.loss(None, None, logits, None, labels, 0.0, step=0, domain_index=domains).loss, expected)


def test_group_dro_weights_rise_with_a_domains_risk_and_the_objective_is_the_weighted_risk():
    adapter = ADAPTERS.build({"name": "group_dro", "eta": 0.5}, num_classes=2, feature_dim=2, num_domains=2)
    assert torch.equal(adapter.domain_weights, torch.tensor([0.5, 0.5]))  # uniform at the start
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1])
    domains = torch.tensor([0, 0, 1, 1])
    out = adapter.loss(None, None, logits, None, labels, 0.5, domain_index=domains)
    risks = torch.tensor([F.cross_entropy(logits[:2], labels[:2]).item(), math.log(2)])
    q = 0.5 * torch.exp(0.5 * risks)
    q = q / q.sum()
    assert torch.allclose(adapter.domain_weights, q) and q[1] > q[0]  # the harder domain gains weight
    assert torch.allclose(out.loss, (q * risks).sum())
    out.loss.backward()
    assert logits.grad[2:].abs().sum() > logits.grad[:2].abs().sum()


def test_source_alignment_averages_the_distance_over_pairs_of_domains():
    features = torch.randn(12, 3)
    domains = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    parts = [features[:4], features[4:8], features[8:]]
    expected = (coral_loss(parts[0], parts[1], "tllib") + coral_loss(parts[0], parts[2], "tllib") + coral_loss(parts[1], parts[2], "tllib")) / 3
    assert torch.allclose(pairwise_alignment(features, domains, lambda a, b: coral_loss(a, b, "tllib")), expected)
    assert pairwise_alignment(features, torch.zeros(12, dtype=torch.long), lambda a, b: coral_loss(a, b, "tllib")).item() == 0.0


@pytest.mark.slow  # a real (tiny) training run per method
@pytest.mark.parametrize("method", ["vrex", "irm", "group_dro", "dg_coral", "dg_mmd", "dg_dann", "dg_cdann", "mixup", "mldg"])
def test_each_dg_method_trains_on_several_sources_and_records_them(tmp_path, method):
    from mlflow.tracking import MlflowClient

    from tlbench.train import train

    uri = f"sqlite:///{tmp_path}/m.db"
    out = train(tiny_run(tmp_path, uri, [f"adapt={method}", SOURCES, "data.target=rotated_fashion:75", "data.synthetic_size=300"]))
    run = MlflowClient(uri).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and math.isfinite(out["test/target_acc"])
    assert run.data.tags["source_domain"] == "rotated_fashion:0+rotated_fashion:15+rotated_fashion:30"
    assert run.data.params["data.sources"].startswith("['rotated_fashion:0'")


def test_with_several_sources_a_method_that_ignores_the_target_never_forwards_it(tmp_path):
    from tlbench.assembly import build_module
    from tlbench.module import TransferModule
    from tlbench.plan import plan_run

    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["adapt=source_only", SOURCES, "data.target=rotated_fashion:75", "data.synthetic_size=300"])
    module, datamodule, _ = build_module(plan_run(run), DomainDataModule(run.data, run.seed, steps_per_epoch=2), TransferModule)
    assert module.batch_composition == "source"  # small_cnn has BatchNorm: a joint batch would show it the unseen domain
    batch = next(iter(datamodule.train_dataloader()))
    assert set((batch[0] if isinstance(batch, tuple) else batch)) == {"source"}


def test_leave_one_domain_out_may_measure_the_whole_unseen_domain():
    run = validate(compose(["experiment=dg_rotated_fashion", "data.target=rotated_fashion:0"]))  # data.source names domain 0 too
    assert run.data.target_eval == "whole" and run.data.target in run.data.sources


def test_several_streamed_folder_domains_pool_and_carry_their_domain_index(tmp_path):
    """Folder domains (PACS, VLCS, … in DomainBed's layout) stream from disk; pooled, each batch still
    carries the domain of every image."""
    from test_data_formats import write_domain

    for name in ("a", "b", "c"):
        write_domain(tmp_path / name, per_class=10)
    sources = f"data.sources=[folder:{tmp_path / 'a'},folder:{tmp_path / 'b'}]"
    run = validate(compose(["backbone=small_cnn", sources, f"data.target=folder:{tmp_path / 'c'}", "data.image_size=16", "data.batch_size=8"]))
    datamodule = DomainDataModule(run.data, run.seed)
    datamodule.serve(needs_of(ADAPTERS.validate({"name": "vrex"})), "source")
    seen = set()
    for batch in _batches(datamodule):
        images, labels, domains = batch["source"]
        assert len(images) == len(labels) == len(domains) and images.shape[1:] == (3, 16, 16)
        seen |= set(domains.tolist())
    assert seen == {0, 1} and len(datamodule.source_train) == 2 * len(datamodule.source_domains[0].train)


def _batches(datamodule):
    for batch in datamodule.train_dataloader():
        yield batch[0] if isinstance(batch, tuple) else batch


def test_dg_dann_classifies_the_source_domain_and_reverses_its_gradient():
    torch.manual_seed(0)
    adapter = ADAPTERS.build({"name": "dg_dann", "trade_off": 2.0}, num_classes=2, feature_dim=4, num_domains=3)
    assert adapter.discriminator.net[-1].out_features == 3  # one logit per source domain
    features = torch.randn(6, 4, requires_grad=True)
    domains = torch.tensor([0, 1, 2, 0, 1, 2])
    out = adapter.loss(features, None, None, None, None, progress=1.0, domain_index=domains)
    expected = F.cross_entropy(adapter.discriminator(features), domains)
    assert torch.allclose(out.loss, 2.0 * expected)
    out.loss.backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    (2.0 * F.cross_entropy(adapter.discriminator(features), domains)).backward()
    coeff = 2 / (1 + math.exp(-10.0)) - 1  # the DANN ramp at the end of training
    assert torch.allclose(reversed_grad, -coeff * features.grad, atol=1e-6)  # the features learn to confuse it


def test_mixup_partners_come_from_other_domains_and_the_loss_mixes_both_labels():
    torch.manual_seed(0)
    domains = torch.tensor([0, 0, 1, 1, 2, 2])
    for _ in range(20):
        partners = cross_domain_partners(domains)
        assert (domains[partners] != domains).all()
    alone = cross_domain_partners(torch.zeros(4, dtype=torch.long))  # one domain: plain mixup, never itself
    assert (alone != torch.arange(4)).all()
    network = torch.nn.Linear(3, 2)
    inputs, labels = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    partners = torch.tensor([2, 3, 0, 1, 0, 1])
    mixed = 0.3 * inputs + 0.7 * inputs[partners]
    logits = network(mixed)
    by_hand = 0.3 * F.cross_entropy(logits, labels) + 0.7 * F.cross_entropy(logits, labels[partners])
    assert torch.allclose(mixup_loss(network, inputs, labels, partners, 0.3), by_hand)
    assert torch.allclose(mixup_loss(network, inputs, labels, partners, 1.0), F.cross_entropy(network(inputs), labels))


def test_mldg_meta_tests_the_virtually_updated_weights_with_a_first_order_gradient():
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 2)
    inputs, labels = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    domains = torch.tensor([0, 0, 1, 1, 2, 2])
    train, test = meta_split(domains)
    assert len(torch.unique(domains[test])) == 1 and not (train & test).any() and (train | test).all()
    objective, train_risk, test_risk = mldg_objective(network, inputs, labels, network(inputs), train, test, inner_lr=0.5, beta=2.0)
    # by hand: one SGD step of 0.5 on the meta-train risk, then the meta-test risk at the new weights
    w, b = network.weight.detach().clone().requires_grad_(), network.bias.detach().clone().requires_grad_()
    risk = F.cross_entropy(inputs[train] @ w.T + b, labels[train])
    gw, gb = torch.autograd.grad(risk, (w, b))
    w2, b2 = (w - 0.5 * gw).detach().requires_grad_(), (b - 0.5 * gb).detach().requires_grad_()
    meta = F.cross_entropy(inputs[test] @ w2.T + b2, labels[test])
    assert torch.allclose(train_risk, risk) and torch.allclose(test_risk, meta)
    assert torch.allclose(objective, risk + 2.0 * meta)
    objective.backward()
    mw, mb = torch.autograd.grad(meta, (w2, b2))  # first order: ∇L_test at θ', the inner gradient held constant
    assert torch.allclose(network.weight.grad, gw + 2.0 * mw, atol=1e-6) and torch.allclose(network.bias.grad, gb + 2.0 * mb, atol=1e-6)


def test_cdann_conditions_its_discriminator_on_the_class():
    torch.manual_seed(0)
    adapter = ADAPTERS.build({"name": "dg_cdann"}, num_classes=3, feature_dim=4, num_domains=2)
    features, labels, domains = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
    out = adapter.loss(features, None, None, None, labels, progress=1.0, domain_index=domains)
    expected = F.cross_entropy(adapter.discriminator(features + adapter.class_embedding(labels)), domains)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert adapter.class_embedding.weight.grad.abs().sum() > 0  # the embedding learns, so the class is seen
    plain = ADAPTERS.build({"name": "dg_dann"}, num_classes=3, feature_dim=4, num_domains=2)
    assert plain.class_embedding is None


@pytest.mark.slow  # reads two committed exports and rebuilds their tables
@pytest.mark.parametrize("study", ["dg_rotated_fashion", "dg_colored_fashion"])
def test_committed_dg_tables_rebuild_byte_for_byte_from_their_exports(study, tmp_path):
    from pathlib import Path

    from tlbench.report.cli import main

    committed = Path(__file__).resolve().parent.parent / "results" / study
    assert main(["--from", str(committed / "runs.csv"), "--out", str(tmp_path)]) == 0
    for name in ("table.md", "table.csv", "table.tex", "oracle.md", "oracle.csv"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


HOLDOUT = ["experiment=dg_colored_fashion", "data.target=colored_fashion:0.9", "data.synthetic_size=300"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.holdout=colored_fashion:0.9"], "it is the target"),
        (["data.holdout=colored_fashion:0.5"], "not one of data.sources"),
        (["data.sources=[colored_fashion:0.1,colored_fashion:0.9]", "data.holdout=colored_fashion:0.1"], "no source domain left"),
    ],
)
def test_a_held_out_source_must_be_a_training_source_with_another_left(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose([*HOLDOUT, *overrides]))


def test_a_held_out_source_is_left_out_of_training_and_measured_whole_every_epoch():
    from tlbench.selection import HOLDOUT_SPLIT

    run = validate(compose([*HOLDOUT, "data.holdout=colored_fashion:0.2"]))
    datamodule = DomainDataModule(run.data, run.seed)
    assert [d.name for d in datamodule.source_domains] == ["colored_fashion:0.1"]
    held = build_domain("colored_fashion:0.2", run.data, run.seed)
    assert len(datamodule.holdout) == len(held.train) + len(held.val) + len(held.test)
    assert datamodule.val_splits[-1] == HOLDOUT_SPLIT and len(datamodule.val_dataloader()) == len(datamodule.val_splits)
    trained = {bytes(x.numpy()) for x in datamodule.source_train.images[:50]}
    assert not trained & {bytes(x.numpy()) for x in held.train.images}  # the held-out domain's images are not trained on
    plain = DomainDataModule(validate(compose(HOLDOUT)).data, run.seed)
    assert plain.holdout is None and HOLDOUT_SPLIT not in plain.val_splits


def test_leave_one_out_chooses_the_epoch_of_the_best_mean_held_out_accuracy():
    import pandas as pd

    from tlbench.report.collection import leave_one_out_choice

    def history(holdout, target, source):
        return pd.DataFrame({"val/holdout_acc": holdout, "eval/target_test_acc": target, "val/source_acc": source}, index=[10, 20, 30])

    # run a peaks at epoch 1, run b at epoch 3; their mean peaks at epoch 2 (0.75 against 0.55 and 0.5)
    a = history([0.9, 0.8, 0.2], [0.1, 0.2, 0.3], [0.9, 0.9, 0.9])
    b = history([0.2, 0.7, 0.8], [0.5, 0.6, 0.7], [0.7, 0.8, 0.9])
    choice = leave_one_out_choice([a, b])
    assert (choice.epoch, choice.step) == (2, 20)
    assert choice.target_acc == pytest.approx(0.4) and choice.source_acc == pytest.approx(0.85)
    assert leave_one_out_choice([a.drop(columns="val/holdout_acc")]) is None  # a run on every source has no held-out score


@pytest.mark.slow  # two tiny training runs
def test_leave_one_out_rows_group_the_held_out_runs_of_a_configuration_and_seed(tmp_path):
    from tlbench.report.collection import collect
    from tlbench.train import train

    uri = f"sqlite:///{tmp_path}/m.db"
    sources = "data.sources=[rotated_fashion:0,rotated_fashion:15,rotated_fashion:30]"
    for held in ("rotated_fashion:0", "rotated_fashion:15"):
        train(tiny_run(tmp_path, uri, ["adapt=vrex", sources, "data.target=rotated_fashion:30", "data.synthetic_size=300", f"data.holdout={held}"]))
    full = train(tiny_run(tmp_path, uri, ["adapt=vrex", sources, "data.target=rotated_fashion:30", "data.synthetic_size=300"]))
    frame = collect(uri, "tlbench", rules=["source_val", "leave_one_out"])
    lodo = frame[frame["rule"] == "leave_one_out"]
    assert len(lodo) == 1 and lodo.iloc[0]["data.holdout"] == "rotated_fashion:0|rotated_fashion:15"
    assert 0 <= lodo.iloc[0]["target_acc"] <= 1
    plain = frame[frame["rule"] == "source_val"]
    assert list(plain["run_id"]) == [full["run_id"]]  # held-out runs never stand for the configuration alone


def test_digits3_pools_grey_8px_and_colour_28px_digits_into_one_stackable_source():
    from tlbench.data.multi_source import conform

    run = validate(compose(["experiment=dg_digits3", "data.target=sklearn_digits", "data.synthetic_size=300"]))
    datamodule = DomainDataModule(run.data, run.seed)
    grey, photo = datamodule.source_domains
    assert (grey.name, photo.name) == ("synthetic_digits", "photo_digits")
    assert grey.train.images.shape[1:] == (1, 8, 8) and photo.train.images.shape[1:] == (3, 28, 28)
    assert datamodule.source_train.images.shape[1:] == (3, 28, 28) and set(datamodule.source_train.domains.tolist()) == {0, 1}
    flat = torch.full((1, 1, 2, 2), 200, dtype=torch.uint8)
    big, same = conform([flat, torch.zeros(1, 3, 4, 4, dtype=torch.uint8)])
    assert big.shape == (1, 3, 4, 4) and (big == 200).all() and same.shape == (1, 3, 4, 4)  # upsampled, grey repeated per channel
    with pytest.raises(ConfigError, match="differ in shape"):
        conform([torch.zeros(2, 5), torch.zeros(2, 6)])
    with pytest.raises(ConfigError, match="2-channel"):
        conform([torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)])


def test_domainbeds_rotated_and_colored_mnist_build_from_mnist_files_when_present(tmp_path):
    from test_data_formats import write_idx_set

    from tlbench.errors import DataError

    with pytest.raises(DataError) as missing:
        build_domain("rotated_mnist:15", DataConfig(root=str(tmp_path), synthetic_size=100), 0)
    assert "\n" not in str(missing.value) and "mnist" in str(missing.value).lower()
    write_idx_set(tmp_path / "mnist", n_train=240, n_test=60)
    data = DataConfig(root=str(tmp_path), synthetic_size=100)
    rotated, colored_domain = build_domain("rotated_mnist:15", data, 0), build_domain("colored_mnist:0.9", data, 0)
    assert rotated.name == "rotated_mnist:15" and rotated.class_names == [str(d) for d in range(10)]
    assert len(rotated.train) + len(rotated.val) + len(rotated.test) == 50  # 300 images dealt to six domains
    assert colored_domain.train.images.shape[1] == 3 and colored_domain.class_names == ["digits 0-4", "digits 5-9"]
    assert not colored_domain.hflip_ok  # a mirrored digit is another symbol
