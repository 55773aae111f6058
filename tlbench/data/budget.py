"""Label budgets: the labelled training set reduced to k images per class or a fraction, stratified and
reproducible for a seed — the limited-data regime that transfer learning exists for."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError
from .base import InMemoryExamples


def dataset_labels(data: Dataset) -> np.ndarray:
    labels = getattr(data, "labels", None)
    if labels is None:
        raise TypeError(f"{type(data).__name__} must expose .labels for label budgets")
    return np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)


def budget_indices(
    labels: np.ndarray,
    seed: int,
    labels_per_class: int | None = None,
    label_fraction: float | None = None,
    setting: str = "data.labels_per_class",
    split: str = "training",
) -> np.ndarray:
    """Indices of the kept examples: exactly `labels_per_class` per class (error naming `setting` if a
    class of the `split` has fewer), or round(fraction × class size) per class (at least one)."""
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if labels_per_class is not None:
            if labels_per_class > len(members):
                raise ConfigError(f"{setting}: {labels_per_class} requested but class {cls} has only {len(members)} {split} images")
            count = labels_per_class
        else:
            count = max(1, int(round(label_fraction * len(members))))
        kept.append(members[:count])
    return np.sort(np.concatenate(kept))


def apply_label_budget(
    data: Dataset, seed: int, labels_per_class: int | None, label_fraction: float | None, setting: str = "data.labels_per_class", split: str = "training"
) -> Dataset:
    if labels_per_class is None and label_fraction is None:
        return data
    indices = budget_indices(dataset_labels(data), seed, labels_per_class, label_fraction, setting, split)
    if isinstance(data, InMemoryExamples):
        return data.subset(indices)
    subset = Subset(data, indices.tolist())
    subset.labels = dataset_labels(data)[indices]
    return subset
