"""Small networks for digit benchmarks (MNIST/USPS/SVHN), trained from scratch or from our checkpoints.

`lenet` and `dtn` are the feature extractors used across the domain-adaptation literature (LeNet for
28 px grey digits, DTN for 32 px SVHN↔MNIST); `small_cnn` is a tiny CNN for tests and quick runs.
Their stages are their own submodules, so they are plain `Backbone`s with no wrapped network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from . import BACKBONES
from .base import Backbone, Preprocessing
from .weights import IMAGENET, load_backbone_weights

DIGIT_STATS = dict(mean=(0.5,), std=(0.5,))


class SequentialBackbone(Backbone):
    """Stages applied one after the other; the last one returns (N, out_features)."""

    def __init__(self, stages: list[nn.Module], out_features: int, preprocessing: Preprocessing):
        super().__init__()
        self.stage_modules = nn.ModuleList(stages)
        self.out_features = out_features
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stage_modules:
            x = stage(x)
        return x


def lenet(input_size: int = 28) -> SequentialBackbone:
    """LeNet as in the DA literature: conv(1→20,5)-pool-relu, conv(20→50,5)-dropout-pool-relu, fc 800→500."""
    side = ((input_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ConfigError(f"backbone.input_size: lenet needs at least 16 px, got {input_size}")
    return SequentialBackbone(
        [
            nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU()),
            nn.Sequential(nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU()),
        ],
        out_features=500,
        preprocessing=Preprocessing(input_size=input_size, in_chans=1, **_rgb_or_grey(1)),
    )


def dtn(input_size: int = 32) -> SequentialBackbone:
    """DTN: three stride-2 5x5 convs (64/128/256) with BN and growing dropout, then fc 4096→512 with BN."""

    def conv(cin: int, cout: int, drop: float) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 5, stride=2, padding=2), nn.BatchNorm2d(cout), nn.Dropout2d(drop), nn.ReLU())

    side = input_size
    for _ in range(3):
        side = (side - 1) // 2 + 1  # stride-2 5x5 conv with padding 2
    return SequentialBackbone(
        [
            conv(3, 64, 0.1),
            conv(64, 128, 0.3),
            conv(128, 256, 0.5),
            nn.Sequential(nn.Flatten(), nn.Linear(256 * side * side, 512), nn.BatchNorm1d(512), nn.ReLU()),
        ],
        out_features=512,
        preprocessing=Preprocessing(input_size=input_size, in_chans=3, **_rgb_or_grey(3)),
    )


def dann_mnist(input_size: int = 28) -> SequentialBackbone:
    """The DANN paper's MNIST → MNIST-M feature extractor (Ganin et al. 2016, Fig. 4): conv 5x5 32 →
    max-pool → conv 5x5 48 → max-pool, ReLU, no BatchNorm; 768 features at 28 px. Its label predictor is
    a head of 100-100 (`head.hidden=[100,100]`), its domain classifier one layer of 100 (`adapt.depth=1`)."""
    side = ((input_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ConfigError(f"backbone.input_size: dann_mnist needs at least 16 px, got {input_size}")
    return SequentialBackbone(
        [
            nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()),
        ],
        out_features=48 * side * side,
        preprocessing=Preprocessing(input_size=input_size, in_chans=3, **_rgb_or_grey(3)),
    )


def small_cnn(input_size: int = 32, width: int = 18) -> SequentialBackbone:
    """Three conv-BN-ReLU stages (width, 2x, 4x channels; ~30k parameters at width 18) and global
    average pooling: trains in seconds on CPU and works at any input size."""

    def conv(cin: int, cout: int, pool: bool) -> nn.Module:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]))

    return SequentialBackbone(
        [conv(3, width, True), conv(width, 2 * width, True), conv(2 * width, 4 * width, False)],
        out_features=4 * width,
        preprocessing=Preprocessing(input_size=input_size, in_chans=3, **_rgb_or_grey(3)),
    )


def _rgb_or_grey(channels: int) -> dict[str, tuple[float, ...]]:
    return {key: value * channels for key, value in DIGIT_STATS.items()}


@dataclass
class LeNetConfig:
    family: str = "lenet"
    name: str = "lenet"
    weights: str = "none"
    #: None = 28 (the fc layer's size follows the input size).
    input_size: Optional[int] = None


@dataclass
class DTNConfig:
    family: str = "dtn"
    name: str = "dtn"
    weights: str = "none"
    #: None = 32.
    input_size: Optional[int] = None


@dataclass
class DANNMnistConfig:
    family: str = "dann_mnist"
    name: str = "dann_mnist"
    weights: str = "none"
    #: None = 28 (the paper's MNIST-M size).
    input_size: Optional[int] = None


@dataclass
class SmallCNNConfig:
    family: str = "small_cnn"
    name: str = "small_cnn"
    weights: str = "none"
    #: None = 32.
    input_size: Optional[int] = None
    #: Channels of the first stage (then 2x, 4x); the feature size is 4 * width.
    width: int = 18


def _finish(backbone: Backbone, name: str, weights: str) -> Backbone:
    if weights == IMAGENET:
        raise WeightsError(f"backbone.weights=imagenet: '{name}' has no ImageNet weights; use none or a checkpoint")
    load_backbone_weights(backbone, weights)
    return backbone


@BACKBONES.register("lenet", LeNetConfig)
def build_lenet(cfg: LeNetConfig) -> Backbone:
    return _finish(lenet(cfg.input_size or 28), cfg.family, cfg.weights)


@BACKBONES.register("dtn", DTNConfig)
def build_dtn(cfg: DTNConfig) -> Backbone:
    return _finish(dtn(cfg.input_size or 32), cfg.family, cfg.weights)


@BACKBONES.register("small_cnn", SmallCNNConfig)
def build_small_cnn(cfg: SmallCNNConfig) -> Backbone:
    return _finish(small_cnn(cfg.input_size or 32, cfg.width), cfg.family, cfg.weights)


@BACKBONES.register("dann_mnist", DANNMnistConfig)
def build_dann_mnist(cfg: DANNMnistConfig) -> Backbone:
    return _finish(dann_mnist(cfg.input_size or 28), cfg.family, cfg.weights)
