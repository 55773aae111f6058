"""Self-training and source-free transfer: pseudo-labelling, FixMatch and SHOT against hand computations,
and the source-free guarantee (no source batch is ever drawn) on a real two-step run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_run
from scipy.spatial.distance import cdist

from tlbench.adapt import ADAPTERS
from tlbench.adapt.layers import confident_pseudo_labels, masked_cross_entropy
from tlbench.adapt.shot import centroid_pseudo_labels, information_maximization
from tlbench.assembly import build_module
from tlbench.data.datamodule import DomainDataModule
from tlbench.errors import ConfigError
from tlbench.module import TransferModule
from tlbench.plan import plan_run


# ------------------------------------------------------------------ losses
def test_information_maximization_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    p1 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    p2 = [0.5, 0.5]
    eps = 1e-5
    entropy = lambda p: -sum(q * math.log(q + eps) for q in p)  # noqa: E731
    mean = [(a + b) / 2 for a, b in zip(p1, p2)]
    expected = (entropy(p1) + entropy(p2)) / 2 - entropy(mean)
    assert information_maximization(logits).item() == pytest.approx(expected, rel=1e-5)
    assert information_maximization(logits, diversity=False).item() == pytest.approx((entropy(p1) + entropy(p2)) / 2, rel=1e-5)


def test_information_maximization_prefers_confident_and_diverse_predictions():
    confident_diverse = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
    confident_collapsed = torch.tensor([[9.0, 0.0], [9.0, 0.0]])
    uncertain = torch.zeros(2, 2)
    values = [information_maximization(x).item() for x in (confident_diverse, confident_collapsed, uncertain)]
    assert values[0] < values[1] and values[0] < values[2]


def test_confidence_threshold_masks_and_labels():
    logits = torch.tensor([[3.0, 0.0], [0.1, 0.0], [0.0, 4.0]])  # top probabilities 0.953, 0.525, 0.982
    labels, mask = confident_pseudo_labels(logits, threshold=0.9)
    assert labels.tolist() == [0, 0, 1] and mask.tolist() == [1.0, 0.0, 1.0]
    student = torch.tensor([[0.0, 0.0], [5.0, -5.0], [1.0, 0.0]], requires_grad=True)
    loss = masked_cross_entropy(student, labels, mask)
    expected = (math.log(2) + 0.0 + (-math.log(math.exp(0) / (math.exp(1) + 1)))) / 3  # the masked term counts as 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.equal(student.grad[1], torch.zeros(2))  # no gradient from the unconfident example


def test_pseudo_label_weight_ramps_from_zero_and_the_label_carries_no_gradient():
    adapter = ADAPTERS.build({"name": "pseudo_label", "threshold": 0.0}, num_classes=2, feature_dim=2)
    logits_t = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert adapter.loss(None, None, None, logits_t, None, progress=0.0).loss.item() == 0.0
    out = adapter.loss(None, None, None, logits_t, None, progress=1.0)
    ramp = 2 / (1 + math.exp(-10)) - 1
    expected = ramp * F.cross_entropy(logits_t.detach(), torch.tensor([0, 1])).item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.logs["mask_rate"].item() == 1.0


def test_fixmatch_learns_only_through_the_strong_view_of_confident_examples():
    adapter = ADAPTERS.build({"name": "fixmatch", "threshold": 0.95}, num_classes=2, feature_dim=2)
    weak = torch.tensor([[5.0, 0.0], [0.2, 0.0]], requires_grad=True)  # confident, not confident
    strong = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    out = adapter.loss(None, None, None, weak, None, progress=0.5, logits_t_strong=strong)
    expected = F.cross_entropy(strong.detach()[:1], torch.tensor([0])).item() / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert weak.grad is None  # the pseudo-label is a constant
    assert strong.grad[0].abs().sum() > 0 and torch.equal(strong.grad[1], torch.zeros(2))


def test_fixmatch_weak_and_strong_views_differ(tmp_path):
    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["adapt=fixmatch", "data.augment=standard"])
    module, _, _ = build_module(plan_run(run), DomainDataModule(run.data, run.seed), TransferModule)
    assert module.augment.preset == "standard" and module.strong_augment.preset == "strong"
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(0)
    weak = module.augment(images)
    torch.manual_seed(0)
    strong = module.strong_augment(images)
    assert weak.shape == strong.shape and (weak - strong).abs().mean() > 0.05
    out = module._forward_domains(images, images, images)
    assert out.logits_t_strong is not None and not torch.allclose(out.logits_t, out.logits_t_strong)


# -------------------------------------------------------------------- SHOT
def _numpy_shot_labels(features: np.ndarray, logits: np.ndarray, rounds: int = 1) -> np.ndarray:
    """SHOT's obtain_label, written from the paper's description with numpy/scipy."""
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    classes = probabilities.shape[1]
    present = np.where(np.eye(classes)[probabilities.argmax(1)].sum(0) > 0)[0]
    centroids = probabilities.T @ features / (1e-8 + probabilities.sum(0)[:, None])
    labels = present[cdist(features, centroids[present], "cosine").argmin(1)]
    for _ in range(rounds):
        affinity = np.eye(classes)[labels]
        centroids = affinity.T @ features / (1e-8 + affinity.sum(0)[:, None])
        labels = present[cdist(features, centroids[present], "cosine").argmin(1)]
    return labels


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_shot_centroid_pseudo_labels_match_numpy(rounds):
    generator = torch.Generator().manual_seed(rounds)
    features = torch.randn(60, 5, generator=generator)
    logits = torch.randn(60, 4, generator=generator) * 2
    logits[:, 3] -= 100  # a class nobody predicts keeps no centroid
    labels = centroid_pseudo_labels(features, logits, rounds)
    expected = _numpy_shot_labels(features.double().numpy(), logits.double().numpy(), rounds)
    assert labels.tolist() == expected.tolist()
    assert 3 not in labels.tolist()


def test_shot_pseudo_labels_recover_clusters_a_weak_classifier_gets_partly_wrong():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    truth = torch.arange(100) % 2
    features = centres[truth] + 0.3 * torch.randn(100, 2, generator=generator)
    logits = torch.stack([features[:, 0], features[:, 1]], 1) * 0.2
    logits[:20] = logits[:20].flip(1)  # the classifier mislabels 20 examples
    assert (logits.argmax(1) == truth).float().mean() == 0.8
    assert torch.equal(centroid_pseudo_labels(features, logits), truth)


def test_source_free_datamodule_yields_no_source_batch_and_target_positions(tmp_path):
    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["adapt=shot", "adapt.source_model=runs:/x", "selection=last"])
    datamodule = DomainDataModule(run.data, run.seed, steps_per_epoch=3)
    build_module(plan_run(run), datamodule, TransferModule)  # serves the datamodule to the method
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3
    for batch in (b[0] if isinstance(b, tuple) else b for b in batches):
        assert set(batch) == {"target"}
        images, positions = batch["target"]
        assert torch.equal(datamodule.target.train.images[positions], images)  # positions index the target set
    assert datamodule.val_splits == ("val/target", "eval/target_test") and len(datamodule.val_dataloader()) == 2
    assert datamodule.test_splits == ("test/target",) and len(datamodule.test_dataloader()) == 1
    in_order = torch.cat(list(datamodule.target_train_in_order()))
    assert torch.equal(in_order, datamodule.target.train.images)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adapt=shot", "selection=last"], "adapt.source_model: SHOT adapts a source-trained model"),
        (["adapt=shot", "adapt.source_model=runs:/x"], "selection=source_val"),
        (["adapt=shot", "adapt.source_model=runs:/x", "selection=last", "data.target=synthetic_digits"], "source-free"),
    ],
)
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_shot_refuses_configs_it_cannot_honour(tmp_path, overrides, message):
    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", overrides)
    with pytest.raises(ConfigError, match=message):
        build_module(plan_run(run), DomainDataModule(run.data, run.seed), TransferModule)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_shot_two_step_adapts_without_reading_source_data(tmp_path, monkeypatch):
    """Source training, then SHOT with source_model=source_only: the source run of the same seed is found,
    its weights start the model, the head stays as it was, and no loader is ever built on source data."""
    import mlflow

    from tlbench import api
    from tlbench.api import load_run

    uri = f"sqlite:///{tmp_path}/m.db"
    source = api.record(tiny_run(tmp_path, uri, ["adapt=source_only"]))
    source_module = load_run(source["run_id"], uri)

    read = []
    original = DomainDataModule._loader
    monkeypatch.setattr(DomainDataModule, "_loader", lambda self, data, *a, **k: read.append((self, data)) or original(self, data, *a, **k))
    shot = api.record(tiny_run(tmp_path, uri, ["adapt=shot", "adapt.source_model=source_only", "selection=last"]))
    datamodule = read[0][0]
    source_sets = [datamodule.source.train, datamodule.source.val, datamodule.source.test, datamodule.source_train]
    assert read and not any(data is s for _, data in read for s in source_sets)
    recorded = mlflow.MlflowClient(uri).get_run(shot["run_id"])
    assert recorded.data.tags["source_run_id"] == source["run_id"]
    assert "val/source_acc" not in recorded.data.metrics and "val/target_acc" in recorded.data.metrics
    assert "train/pseudo_ce" in recorded.data.metrics
    adapted = load_run(shot["run_id"], uri)
    for key, value in source_module.head.state_dict().items():
        assert torch.equal(adapted.head.state_dict()[key], value), key  # the source hypothesis is frozen
    assert any(not torch.equal(value, adapted.backbone.state_dict()[key]) for key, value in source_module.backbone.state_dict().items())


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_source_model_by_method_name_says_what_to_run_when_missing(tmp_path):
    from tlbench import api

    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["adapt=shot", "adapt.source_model=source_only", "selection=last"])
    with pytest.raises(ConfigError, match="no finished source_only run with seed 0"):
        api.record(run)


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_selection_last_keeps_the_final_epoch(tmp_path):
    from tlbench import api

    metrics = api.record(tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["selection=last", "trainer.max_epochs=3"]))
    assert metrics["selected_epoch"] == 3  # the third of 3 epochs


def test_a_search_refuses_selection_last():
    from helpers import TINY

    from tlbench.search.space import space_from_dict
    from tlbench.search.study import prepare

    space = space_from_dict("lr", {"params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}})
    with pytest.raises(ConfigError, match="metric to optimise"):
        prepare(space, TINY + ["selection=last"])


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_a_source_model_trained_on_the_target_labels_is_refused(tmp_path):
    """runs:/<id> of a run whose labelled data was the target domain (a train-on-target bound) would leak target
    labels into a 'source-free' number: one ConfigError line, nothing trained."""
    from tlbench import api

    uri = f"sqlite:///{tmp_path}/m.db"
    on_target = api.record(tiny_run(tmp_path / "t", uri, ["adapt=source_only", "data.source=sklearn_digits", "trainer.max_epochs=1"]))
    shot = tiny_run(tmp_path / "s", uri, ["adapt=shot", f"adapt.source_model=runs:/{on_target['run_id']}", "selection=last"])
    with pytest.raises(ConfigError, match="trained on labelled 'sklearn_digits', this run's target domain"):
        api.record(shot)
