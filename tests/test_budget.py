"""Label budgets (tlbench/data/budget.py): exact per-class counts, reproducible per seed, fraction
rounding, and a clear error when a class cannot supply the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from tlbench.config import DataConfig
from tlbench.data.base import TensorImages
from tlbench.data.budget import apply_label_budget, budget_indices
from tlbench.data.image_folder import ImageFiles
from tlbench.errors import ConfigError

# Unbalanced classes: 10, 15 and 3 examples, interleaved.
LABELS = np.array([0] * 10 + [1] * 15 + [2] * 3)[np.random.default_rng(0).permutation(28)]


def counts(labels: np.ndarray, indices: np.ndarray) -> list[int]:
    return np.bincount(labels[indices], minlength=3).tolist()


def test_labels_per_class_is_exact():
    indices = budget_indices(LABELS, seed=0, labels_per_class=3)
    assert counts(LABELS, indices) == [3, 3, 3]
    assert len(np.unique(indices)) == len(indices) and np.all(np.diff(indices) > 0)


def test_same_seed_same_subset_other_seed_different():
    first = budget_indices(LABELS, seed=1, labels_per_class=2)
    assert np.array_equal(first, budget_indices(LABELS, seed=1, labels_per_class=2))
    assert not np.array_equal(first, budget_indices(LABELS, seed=2, labels_per_class=2))


def test_fraction_rounds_per_class_and_keeps_at_least_one():
    assert counts(LABELS, budget_indices(LABELS, seed=0, label_fraction=0.5)) == [5, 8, 2]  # 5, 7.5, 1.5
    assert counts(LABELS, budget_indices(LABELS, seed=0, label_fraction=0.1)) == [1, 2, 1]  # 1, 1.5, 0.3 → ≥1
    assert counts(LABELS, budget_indices(LABELS, seed=0, label_fraction=1.0)) == [10, 15, 3]


def test_budget_larger_than_a_class_is_a_config_error():
    with pytest.raises(ConfigError, match="data.labels_per_class: 4 requested but class 2 has only 3 training images"):
        budget_indices(LABELS, seed=0, labels_per_class=4)


def test_apply_keeps_tensor_images_in_memory_and_streams_as_subset():
    images = torch.arange(28, dtype=torch.uint8).view(28, 1, 1, 1).expand(28, 1, 2, 2).contiguous()
    data = TensorImages(images, torch.from_numpy(LABELS))
    assert apply_label_budget(data, 0, None, None) is data
    kept = apply_label_budget(data, 0, 2, None)
    assert isinstance(kept, TensorImages) and torch.bincount(kept.labels).tolist() == [2, 2, 2]
    assert torch.equal(kept.labels, torch.from_numpy(LABELS)[kept.images[:, 0, 0, 0].long()])

    files = ImageFiles([f"/nowhere/{i}.png" for i in range(28)], LABELS, size=8)  # labels only, no decoding
    subset = apply_label_budget(files, 0, None, 0.5)
    assert isinstance(subset, Subset) and np.bincount(subset.labels).tolist() == [5, 8, 2]


def test_datamodule_applies_budget_to_source_train_only():
    from tlbench.data.datamodule import DomainDataModule

    cfg = DataConfig(source="sklearn_digits", target="sklearn_digits", labels_per_class=4)
    module = DomainDataModule(cfg, seed=0)
    assert torch.bincount(module.source_train.labels).tolist() == [4] * 10
    assert len(module.source.val) > 40 and len(module.target.test) > 40
    again = DomainDataModule(cfg, seed=0)
    assert torch.equal(again.source_train.images, module.source_train.images)


def test_validation_cap_takes_k_per_class_from_source_val_only():
    from tlbench.data.datamodule import DomainDataModule

    cfg = DataConfig(source="sklearn_digits", target="sklearn_digits", labels_per_class=4, val_labels_per_class=2)
    module = DomainDataModule(cfg, seed=0)
    assert torch.bincount(module.source_val.labels).tolist() == [2] * 10
    assert torch.bincount(module.source_train.labels).tolist() == [4] * 10
    assert len(module.target_test) == len(module.target.test)  # the test split is untouched
    # the capped images are images of the validation split (no training image leaks in)
    val_rows = {bytes(x.numpy()) for x in module.source.val.images}
    assert all(bytes(x.numpy()) in val_rows for x in module.source_val.images)
    assert module.summary()["source_val_size"] == 20
    assert len(module.val_dataloader()[0]) * cfg.batch_size >= 20


def test_validation_cap_larger_than_a_class_names_its_setting():
    from tlbench.data.datamodule import DomainDataModule

    with pytest.raises(ConfigError, match="data.val_labels_per_class: 500 requested but class 0 has only .* validation images"):
        DomainDataModule(DataConfig(source="sklearn_digits", target="sklearn_digits", val_labels_per_class=500), seed=0)


def test_whole_target_evaluation_measures_every_target_image():
    from tlbench.data.datamodule import DomainDataModule

    split = DomainDataModule(DataConfig(synthetic_size=300), seed=0)
    whole = DomainDataModule(DataConfig(synthetic_size=300, target_eval="whole"), seed=0)
    target = whole.target
    assert len(whole.target_test) == len(target.train) + len(target.val) + len(target.test) == 1797  # all of sklearn's digits
    assert len(split.target_test) == len(split.target.test) < 1797
    assert isinstance(whole.target_test, TensorImages)  # stays in memory: the fast loader
    assert torch.bincount(whole.target_test.labels).sum() == 1797
    assert whole.summary()["target_test_size"] == 1797


def test_whole_target_evaluation_is_refused_in_domain():
    from helpers import compose

    from tlbench.config import validate

    with pytest.raises(ConfigError, match="target_eval=whole.*labelled training images"):
        validate(compose(["data.target=synthetic_digits", "data.target_eval=whole"]))
    with pytest.raises(ConfigError, match="data.target_eval"):
        validate(compose(["data.target_eval=all"]))
