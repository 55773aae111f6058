"""Frozen-feature caching: when the whole backbone stays frozen for a run (linear probe, BN statistics
fixed) and inputs are not randomly augmented, its features are a fixed function of the images. They are
computed once per dataset split, stored on disk under a key of everything they depend on, and reused
across epochs, runs and sweep trials; only the head (and the method's own layers) then train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .atomic_files import atomic_write
from .backbones import Backbone
from .data.base import DomainSplits, InMemoryExamples, TensorImages
from .paths import cache_dir

log = logging.getLogger(__name__)


class TensorFeatures(InMemoryExamples):
    """Precomputed float features (N×D) with labels; batched like images by the same fast loader."""

    ndim, dtype, described = 2, "float", "features must be float N×D"


def unchanged(inputs: torch.Tensor) -> torch.Tensor:
    """The preprocessing of cached features: they already are what the backbone would output."""
    return inputs


class CachedBackbone(Backbone):
    """Stands in for a fully frozen backbone whose outputs were cached: identity on features, no stages.
    `featurized` is the backbone that made the features (kept out of the module's parameters and
    checkpoints), so a run can still log it for a next transfer."""

    def __init__(self, out_features: int, featurized: nn.Module | None = None):
        super().__init__()
        self.stage_modules = nn.ModuleList()
        self.out_features = out_features
        self.preprocessing = unchanged
        self._featurized = (featurized,)  # a tuple: not registered as a submodule

    @property
    def featurized(self) -> nn.Module | None:
        return self._featurized[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextmanager
def on_images(module: nn.Module) -> Iterator[nn.Module]:
    """`module` as it maps images, for the block: a run that trained on cached features gets the backbone
    that made them back (to log its model or its backbone), and its cached stand-in afterwards."""
    cached = module.backbone
    if not isinstance(cached, CachedBackbone) or cached.featurized is None:
        yield module
        return
    module.backbone, module.preprocess = cached.featurized, cached.featurized.preprocessing
    try:
        yield module
    finally:
        module.backbone, module.preprocess = cached, cached.preprocessing


def in_memory(domain: DomainSplits) -> bool:
    return all(isinstance(getattr(domain, split), InMemoryExamples) for split in ("train", "val", "test"))


def streamed(domains) -> str | None:
    """Why the features of `domains` cannot be cached although the backbone is fixed: a split streamed from disk."""
    names = [domain.name for domain in domains if not in_memory(domain)]
    return f"feature caching needs in-memory splits; {names[0]} is streamed from disk" if names else None


def why_not_cacheable(schedule, backbone: Backbone, needs, augment: str, max_epochs: int) -> str | None:
    """None when the backbone is a fixed function of the images for the whole run, so caching its
    features gives the same results as the uncached path; otherwise the reason it is not."""
    stages = len(backbone.stages())
    if schedule.always_frozen_prefix(stages, max_epochs) < stages:
        return "some backbone stages train during the run"
    if schedule.bn_policy == "train":
        return "freeze.bn_policy=train lets BatchNorm statistics of frozen stages move"
    if augment != "none":
        return f"data.augment={augment} makes inputs differ every epoch"
    if not needs.source:
        return "the method is source-free (the cache would featurize the source data)"
    if needs.evaluation_hook:
        return "the method changes the backbone before evaluation"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in backbone.modules()):
        return "the backbone contains active dropout"
    return None


def backbone_digest(backbone: Backbone) -> str:
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _compute_features(backbone: Backbone, data: TensorImages, batch_size: int = 256) -> torch.Tensor:
    usable = hasattr(torch, "accelerator") and torch.accelerator.is_available()
    device = torch.accelerator.current_accelerator() if usable else torch.device("cpu")
    backbone = backbone.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size].to(device)
            chunks.append(backbone(backbone.preprocessing(images)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, backbone.out_features)


def _content_digest(features: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (features, labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verified_entry(path: Path, key_json: str) -> TensorFeatures | None:
    """The cache entry at `path` if it is whole and is what it claims to be: built for exactly this key,
    its content matching the digest written with it. Anything else is removed, with one line saying why."""
    try:
        stored = torch.load(path, weights_only=True)
        problem = (
            "it was built for another split or backbone"
            if stored.get("key") != key_json
            else "its content does not match its digest"
            if _content_digest(stored["features"], stored["labels"]) != stored.get("digest")
            else None
        )
    except Exception as exc:  # unreadable, truncated, or not a cache entry at all
        problem = f"it is unreadable ({type(exc).__name__})"
    if problem is None:
        return TensorFeatures(stored["features"], stored["labels"])
    log.warning("feature cache: rebuilding %s: %s", path.name, problem)
    path.unlink(missing_ok=True)
    return None


#: Splits this process has featurized or verified, by cache file and the file's size and modification
#: time when it was read: the jobs of a sweep read each once; a file changed since is read (and checked) again.
_in_memory: OrderedDict[tuple[Path, int, int], TensorFeatures] = OrderedDict()
_KEPT_IN_MEMORY = 12


def _file_state(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path, stat.st_size, stat.st_mtime_ns


def _kept(path: Path, features: TensorFeatures) -> TensorFeatures:
    _in_memory[_file_state(path)] = features
    if len(_in_memory) > _KEPT_IN_MEMORY:
        _in_memory.popitem(last=False)
    return features


def featurize_split(backbone: Backbone, data: TensorImages, key: dict) -> TensorFeatures:
    """Features of one split: from this process's memory, else from the disk cache when present and
    verified, else computed (and written atomically)."""
    key_json = json.dumps(key, sort_keys=True, default=str)
    path = cache_dir("features") / f"{hashlib.sha256(key_json.encode()).hexdigest()[:24]}.pt"
    if path.exists() and (state := _file_state(path)) in _in_memory:
        _in_memory.move_to_end(state)
        return _in_memory[state]
    if path.exists() and (cached := _verified_entry(path, key_json)) is not None:
        return _kept(path, cached)
    features = _compute_features(backbone, data)
    entry = {"features": features, "labels": data.labels, "key": key_json, "digest": _content_digest(features, data.labels)}
    atomic_write(path, lambda handle: torch.save(entry, handle))
    return _kept(path, TensorFeatures(features, data.labels))


def split_key(backbone: Backbone, backbone_key: str, domain: DomainSplits, split: str, labels: torch.Tensor) -> dict:
    """Everything a split's features depend on: the cache entry's name."""
    return {
        "backbone": backbone_key,
        "preprocessing": repr(backbone.preprocessing),
        "domain": domain.name,
        "fingerprint": domain.fingerprint,
        "split": split,
        "labels": hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
    }


def featurize_domain(backbone: Backbone, domain: DomainSplits, backbone_key: str) -> DomainSplits:
    splits = {}
    for split in ("train", "val", "test"):
        data = getattr(domain, split)
        splits[split] = featurize_split(backbone, data, split_key(backbone, backbone_key, domain, split, data.labels))
    return dataclasses.replace(domain, **splits)
