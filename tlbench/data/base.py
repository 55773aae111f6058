"""What a dataset gives the rest of tlbench: one domain's labelled images, already split.

Small datasets live in memory as uint8 tensors (`TensorImages`) and are batched by indexing, never
per-sample PIL work; large folder datasets may provide any `torch.utils.data.Dataset` that yields
`(uint8 tensor C×H×W, int label)` of a fixed size and exposes `.labels`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


class InMemoryExamples(Dataset):
    """Examples held as one tensor (`images`: images, or features computed from them) with int64 labels:
    batched by indexing (data/loaders.py), never per sample. A subclass names the tensor it holds (number
    of dimensions, dtype, or "float" for any floating dtype), checked on construction."""

    ndim: int | None = None
    dtype: torch.dtype | str | None = None
    #: What the error says the tensor must be.
    described = "examples"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        kind_ok = images.is_floating_point() if self.dtype == "float" else self.dtype is None or images.dtype == self.dtype
        if not kind_ok or (self.ndim is not None and images.ndim != self.ndim):
            raise ValueError(f"{self.described}, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} examples")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor | np.ndarray):
        indices = torch.as_tensor(indices, dtype=torch.long)
        return type(self)(self.images[indices], self.labels[indices])


class TensorImages(InMemoryExamples):
    """In-memory images (uint8, N×C×H×W) with integer labels (int64, N)."""

    ndim, dtype, described = 4, torch.uint8, "images must be uint8 N×C×H×W"


@dataclass
class DomainSplits:
    """One domain, split into train / val / test. For a target domain, `train` is used without labels."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    class_names: list[str]
    fingerprint: str = ""
    #: Whether horizontal flips keep labels valid (clothes: yes; digits: no) — used by augmentation.
    hflip_ok: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """Short content hash, recorded in MLflow so a result names the exact data it came from."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions) parts with per-class proportions kept, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions) / np.sum(fractions)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(bounds * len(idx)).astype(int)
        start = 0
        for part, stop in zip(parts, cuts):
            part.extend(idx[start:stop].tolist())
            start = stop
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
