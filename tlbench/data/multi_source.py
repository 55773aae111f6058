"""Several source domains pooled into one labelled source (domain generalisation: `data.sources`).

Each source domain keeps its own train/val/test split and its own label budget; the pooled splits carry
each example's domain index (the position of its domain in the source list), which the `domain_index`
stream serves to methods that declare it (V-REx, IRM, GroupDRO, …). The pooled validation split is
DomainBed's "training-domain validation" set.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from ..errors import ConfigError
from .base import DomainSplits, InMemoryExamples
from .budget import dataset_labels


class DomainTaggedExamples(InMemoryExamples):
    """In-memory examples with a domain index per example (int64), kept through `subset`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor):
        super().__init__(images, labels)
        if domains.shape != labels.shape:
            raise ValueError(f"domains shape {tuple(domains.shape)} does not match {len(labels)} examples")
        self.domains = domains.long()

    def subset(self, indices):
        indices = torch.as_tensor(indices, dtype=torch.long)
        return type(self)(self.images[indices], self.labels[indices], self.domains[indices])


class DomainTaggedFiles(ConcatDataset):
    """Streamed examples of several domains: (x, y) like any split; `tagged()` yields (x, y, domain)."""

    def __init__(self, parts: list[Dataset]):
        super().__init__(parts)
        self.labels = np.concatenate([dataset_labels(p) for p in parts])
        self.domains = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])

    def tagged(self) -> Dataset:
        return _Tagged(self)


class _Tagged(Dataset):
    def __init__(self, pooled: DomainTaggedFiles):
        self.pooled = pooled

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, index: int):
        image, label = self.pooled[index]
        return image, label, self.pooled.domains[index]


def pooled(parts: list[Dataset]) -> Dataset:
    """One split of several domains, domain i tagged i. In-memory images of different shapes (grey 8×8
    digits beside colour 28×28 ones) are brought to the largest size and channel count first, so a
    pooled batch stacks."""
    if all(isinstance(p, InMemoryExamples) for p in parts):
        images = conform([p.images for p in parts])
        domains = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])
        return DomainTaggedExamples(torch.cat(images), torch.cat([p.labels for p in parts]), domains)
    return DomainTaggedFiles(parts)


def conform(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Image tensors N×C×H×W resized (bilinear) to the largest H×W and repeated to the largest C among
    them; unchanged when they already agree. Features (N×D) must agree already."""
    if len({b.shape[1:] for b in batches}) == 1:
        return batches
    if any(b.ndim != 4 for b in batches):
        raise ConfigError(f"data.sources: the domains' examples differ in shape ({', '.join(str(tuple(b.shape[1:])) for b in batches)})")
    channels = max(b.shape[1] for b in batches)
    size = (max(b.shape[2] for b in batches), max(b.shape[3] for b in batches))
    out = []
    for b in batches:
        if b.shape[1] not in (1, channels):
            raise ConfigError(f"data.sources: cannot pool {b.shape[1]}-channel images with {channels}-channel ones")
        if tuple(b.shape[2:]) != size:
            resized = F.interpolate(b.float(), size=size, mode="bilinear", align_corners=False)
            b = resized.round().clamp(0, 255).to(b.dtype) if b.dtype == torch.uint8 else resized.to(b.dtype)
        out.append(b.expand(-1, channels, -1, -1).contiguous())
    return out


def pooled_domain(domains: list[DomainSplits]) -> DomainSplits:
    """The source domains as one DomainSplits (train, val and test pooled and tagged)."""
    names = [d.name for d in domains]
    for domain in domains[1:]:
        if domain.class_names != domains[0].class_names:
            raise ConfigError(f"data.sources: '{domain.name}' and '{domains[0].name}' have different classes; several sources must share one label set")
    fingerprint = hashlib.sha256("|".join(d.fingerprint for d in domains).encode()).hexdigest()[:16]
    return DomainSplits(
        "+".join(names),
        pooled([d.train for d in domains]),
        pooled([d.val for d in domains]),
        pooled([d.test for d in domains]),
        list(domains[0].class_names),
        fingerprint=fingerprint,
        hflip_ok=all(d.hflip_ok for d in domains),
    )
