"""DomainDataModule: labelled source + unlabelled target, drawn together in balanced batches.

Training batches are `{"source": (x, y), "target": x}`: target labels are dropped here, before any
training code can see them. Evaluation loaders, in order: source val, target val, target test.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader

from ..config import DataConfig
from . import build_domain
from .base import DomainSplits
from .budget import apply_label_budget
from .loaders import FixedLengthLoader, make_loader

EVAL_SPLITS = ("val/source", "val/target", "test/target")


class UnlabelledLoader:
    """Wraps a loader of (x, y) and yields x only: the target training stream."""

    def __init__(self, loader):
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, _ in self.loader:
            yield images


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
        self.source = source or build_domain(cfg.source, cfg, seed)
        if target is not None:
            self.target = target
        else:
            self.target = self.source if cfg.target == cfg.source else build_domain(cfg.target, cfg, seed)
        if self.source.class_names != self.target.class_names:
            from ..errors import DataError

            differing = sorted(set(self.source.class_names) ^ set(self.target.class_names))
            raise DataError(
                f"data: class sets differ between source '{cfg.source}' and target '{cfg.target}'"
                + (f"; classes in only one of them: {', '.join(differing[:10])}" if differing else " (same names, different order)")
            )
        self.source_train = apply_label_budget(self.source.train, seed, cfg.labels_per_class, cfg.label_fraction)

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
            "source_val_size": len(self.source.val),
            "target_train_size": len(self.target.train),
            "target_test_size": len(self.target.test),
            "source_fingerprint": self.source.fingerprint,
            "target_fingerprint": self.target.fingerprint,
        }

    def _loader(self, data, train: bool, seed_offset: int = 0):
        loader = make_loader(data, self.cfg.batch_size, train, self.seed + seed_offset, self.cfg.num_workers)
        return FixedLengthLoader(loader, self.steps_per_epoch) if train and self.steps_per_epoch else loader

    def train_dataloader(self):
        # In-domain runs have no separate unlabelled stream; the source stream stands in as "target".
        target_train = self.source_train if self.in_domain else self.target.train
        return CombinedLoader(
            {
                "source": self._loader(self.source_train, train=True),
                "target": UnlabelledLoader(self._loader(target_train, train=True, seed_offset=1)),
            },
            mode="max_size_cycle",
        )

    def target_train_dataloader(self):
        """Target training images without labels, in a fixed order (AdaBN, label-free validators)."""
        return UnlabelledLoader(self._loader(self.target.train, train=False))

    def val_dataloader(self):
        return [self._loader(d, train=False) for d in (self.source.val, self.target.val, self.target.test)]

    def test_dataloader(self):
        return [self._loader(d, train=False) for d in (self.source.test, self.target.test)]
