"""Batch iteration. In-memory tensors are batched by fancy indexing (no per-sample Python or PIL work),
other datasets go through a standard DataLoader with workers."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from .base import InMemoryExamples


class EpochSeed:
    """Epoch-dependent seed; Lightning calls `set_epoch` on a loader's `sampler` before each epoch,
    which keeps shuffling reproducible across resumed runs."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)


class TensorBatchLoader:
    """Iterates (images, labels) batches of in-memory examples, (images, labels, domains) with `domains`
    (examples of several source domains); shards across ranks when distributed."""

    def __init__(self, data: InMemoryExamples, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0, domains: bool = False):
        self.data = data
        self.domains = domains
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sampler = EpochSeed(seed)
        self.batch_sampler = None  # Lightning inspects loaders for samplers; batching is done here

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        order = torch.randperm(n, generator=self.sampler.generator()) if self.shuffle else torch.arange(n)
        if dist.is_available() and dist.is_initialized():
            order = order[dist.get_rank() :: dist.get_world_size()]
        return order

    def __len__(self) -> int:
        n = len(self.data)
        if dist.is_available() and dist.is_initialized():
            n = -(-n // dist.get_world_size())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._indices()
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            index = order[start : start + self.batch_size]
            if self.domains:
                yield self.data.images[index], self.data.labels[index], self.data.domains[index]
            else:
                yield self.data.images[index], self.data.labels[index]


def make_loader(data: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0, domains: bool = False):
    """The fastest correct loader for `data`: TensorBatchLoader for in-memory tensors, DataLoader otherwise.
    With `domains`, batches also carry each example's domain index (data of several source domains)."""
    drop_last = train and len(data) >= batch_size
    if isinstance(data, InMemoryExamples):
        return TensorBatchLoader(data, batch_size, shuffle=train, drop_last=drop_last, seed=seed, domains=domains)
    if domains:
        data = data.tagged()
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=train,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if train else None,
    )


class FixedLengthLoader:
    """Exactly `length` batches per epoch from `loader`, starting it again (reshuffled) whenever it runs
    out: training length in optimizer steps, independent of dataset size and label budget.

    Lightning calls `sampler.set_epoch(e)` before each epoch; pass k of epoch e shuffles like epoch
    e·10,007 + k of the wrapped loader, so a resumed run repeats an uninterrupted one."""

    def __init__(self, loader, length: int):
        self.loader = loader
        self.length = length
        self.sampler = self
        self.batch_sampler = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        produced, epoch_pass = 0, 0
        while produced < self.length:
            inner = getattr(self.loader, "sampler", None)
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(self.epoch * 10_007 + epoch_pass)
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
                produced += 1
                if produced == self.length:
                    return
            if empty:
                raise ValueError("FixedLengthLoader: the wrapped loader yields no batches")
            epoch_pass += 1
