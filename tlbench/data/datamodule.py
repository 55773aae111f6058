"""DomainDataModule: labelled source + unlabelled target, drawn together in balanced batches.

Training batches are `{"source": (x, y), "target": x}`: target labels are dropped here, before any
training code can see them. Evaluation loaders, in order: source val, target val, target test.

`serve(needs, batch_composition)` fits the streams to the method's declared needs: a source-free method
(SHOT) gets no source batch in training, validation or test, a method that needs positions gets
`"target": (x, index)`, one that needs the domain index gets `"source": (x, y, domain)`, and a run that
forwards only the source draws no target batch.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ..config import DataConfig, training_sources
from ..selection import HOLDOUT_SPLIT, TEST_SPLITS, VAL_SPLITS
from . import build_domain
from .base import DomainSplits, InMemoryExamples
from .budget import apply_label_budget, dataset_labels
from .loaders import FixedLengthLoader, make_loader


class PositionLabelled(Dataset):
    """A dataset whose "label" is each example's position: the target stream of methods that keep
    per-example state (SHOT's pseudo-labels), without the real labels ever being read."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index][0], index


def with_positions(data: Dataset) -> Dataset:
    if isinstance(data, InMemoryExamples):  # stays in memory, so it keeps the fast loader
        return type(data)(data.images, torch.arange(len(data)))
    return PositionLabelled(data)


def whole_domain(splits: DomainSplits) -> Dataset:
    """Every image of a domain with its label (train, val and test): the target test set of protocols that
    measure on the whole target domain (TLlib's Office-31), whose unlabelled training images are then
    also test images."""
    parts = [splits.train, splits.val, splits.test]
    if all(isinstance(p, InMemoryExamples) for p in parts) and len({type(p) for p in parts}) == 1:
        return type(parts[0])(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    whole = ConcatDataset(parts)
    whole.labels = np.concatenate([dataset_labels(p) for p in parts])
    return whole


class ReshapedLoader:
    """A loader of (x, y) batches whose items are reshaped by `reshape`; it passes the wrapped loader's
    length and samplers through (Lightning sets their epoch for reproducible shuffling)."""

    def __init__(self, loader):
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield self.reshape(images, labels)


class SingleDomainLoader(ReshapedLoader):
    """Yields (x, y, 0): the domain-index stream of a run with one source domain (several source domains
    carry their own indices, data/multi_source.py)."""

    @staticmethod
    def reshape(images, labels):
        return images, labels, torch.zeros(len(labels), dtype=torch.long)


class UnlabelledLoader(ReshapedLoader):
    """Yields x only: the target training stream, whose labels never leave the datamodule."""

    @staticmethod
    def reshape(images, labels):
        return images


class DomainDataModule(pl.LightningDataModule):
    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        source: DomainSplits | None = None,
        target: DomainSplits | None = None,
        steps_per_epoch: int | None = None,
    ):
        """Builds the configured domains, or uses already-built ones (e.g. their cached features).
        With `steps_per_epoch`, both training streams cycle to exactly that many batches per epoch."""
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        #: The source domains of a run with several (data.sources), each with its own splits; else None.
        self.source_domains = None
        #: The held-out source domain, every image (leave-one-domain-out runs); else None.
        self.holdout = None
        if source is None and cfg.sources:
            from .multi_source import pooled_domain

            self.source_domains = [build_domain(name, cfg, seed) for name in training_sources(cfg)]
            source = pooled_domain(self.source_domains)
            if cfg.holdout is not None:
                self.holdout = whole_domain(build_domain(cfg.holdout, cfg, seed))
        self.source = source or build_domain(cfg.source, cfg, seed)
        if target is not None:
            self.target = target
        else:
            self.target = self.source if cfg.target == cfg.source and not cfg.sources else build_domain(cfg.target, cfg, seed)
        if self.source.class_names != self.target.class_names:
            from ..errors import DataError

            differing = sorted(set(self.source.class_names) ^ set(self.target.class_names))
            raise DataError(
                f"data: class sets differ between source '{cfg.source}' and target '{cfg.target}'"
                + (f"; classes in only one of them: {', '.join(differing[:10])}" if differing else " (same names, different order)")
            )
        self.source_train = self._per_domain("train", lambda split: apply_label_budget(split, seed, cfg.labels_per_class, cfg.label_fraction))
        # a different draw from the training budget's (seed + 1), so the two subsets are not the same ranks
        self.source_val = self._per_domain(
            "val", lambda split: apply_label_budget(split, seed + 1, cfg.val_labels_per_class, None, "data.val_labels_per_class", "validation")
        )
        self.target_test = whole_domain(self.target) if cfg.target_eval == "whole" else self.target.test
        #: Set by `serve`: no source batch anywhere (source-free methods); target batches carry positions.
        self.source_free = False
        self.target_positions = False
        self.domain_index = False
        self.target_stream = True

    def _per_domain(self, split: str, budget) -> Dataset:
        """A source split with its label budget applied: per source domain when there are several."""
        if self.source_domains is None:
            return budget(getattr(self.source, split))
        from .multi_source import pooled

        return pooled([budget(getattr(domain, split)) for domain in self.source_domains])

    def serve(self, needs, batch_composition: str = "joint") -> "DomainDataModule":
        """Shape the loaders to what the method's `needs` (adapt/base.py) say it may and must read (see the
        module docstring); under batch_composition=source no target training stream is drawn at all."""
        self.source_free = not needs.source
        self.target_positions = needs.target_index
        self.domain_index = needs.domain_index
        self.target_stream = batch_composition != "source"
        return self

    @property
    def val_splits(self) -> tuple[str, ...]:
        return (VAL_SPLITS[1:] if self.source_free else VAL_SPLITS) + ((HOLDOUT_SPLIT,) if self.holdout is not None else ())

    @property
    def test_splits(self) -> tuple[str, ...]:
        return TEST_SPLITS[1:] if self.source_free else TEST_SPLITS

    @property
    def in_domain(self) -> bool:
        return self.target is self.source

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def summary(self) -> dict[str, object]:
        """Sizes and fingerprints, recorded with every run."""
        return {
            "source_train_size": len(self.source_train),
            "source_val_size": len(self.source_val),
            "target_train_size": len(self.target.train),
            "target_test_size": len(self.target_test),
            "source_fingerprint": self.source.fingerprint,
            "target_fingerprint": self.target.fingerprint,
        }

    def _loader(self, data, train: bool, seed_offset: int = 0, domains: bool = False):
        tagged = domains and hasattr(data, "domains")
        loader = make_loader(data, self.cfg.batch_size, train, self.seed + seed_offset, self.cfg.num_workers, domains=tagged)
        if domains and not tagged:
            loader = SingleDomainLoader(loader)
        return FixedLengthLoader(loader, self.steps_per_epoch) if train and self.steps_per_epoch else loader

    def train_dataloader(self):
        # In-domain runs have no separate unlabelled stream; the source stream stands in as "target".
        target_train = self.source_train if self.in_domain else self.target.train
        streams = {}
        if not self.source_free:
            streams["source"] = self._loader(self.source_train, train=True, domains=self.domain_index)
        if self.target_stream and self.target_positions:
            streams["target"] = self._loader(with_positions(target_train), train=True, seed_offset=1)
        elif self.target_stream:
            streams["target"] = UnlabelledLoader(self._loader(target_train, train=True, seed_offset=1))
        return CombinedLoader(streams, mode="max_size_cycle")

    def target_train_in_order(self):
        """Target training images without labels, all of them (never sharded across devices) in their
        fixed order, so position i is example i of the target stream (AdaBN statistics, SHOT labels)."""
        data = self.target.train
        batch_size = self.cfg.batch_size
        if isinstance(data, InMemoryExamples):
            return (data.images[start : start + batch_size] for start in range(0, len(data), batch_size))
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=self.cfg.num_workers)
        return (images for images, _ in loader)

    def _evaluation_loaders(self, splits: dict[str, object], names: tuple[str, ...]):
        return [self._loader(splits[name], train=False) for name in names]

    def val_dataloader(self):
        splits = {"val/source": self.source_val, "val/target": self.target.val, "eval/target_test": self.target_test, HOLDOUT_SPLIT: self.holdout}
        return self._evaluation_loaders(splits, self.val_splits)

    def test_dataloader(self):
        return self._evaluation_loaders({"test/source": self.source.test, "test/target": self.target_test}, self.test_splits)
