"""Classification heads put on top of a backbone's pooled features: linear, or an MLP with dropout."""

from __future__ import annotations

from torch import nn


def build_head(in_features: int, num_classes: int, hidden: list[int], dropout: float) -> nn.Module:
    if not hidden:
        return nn.Linear(in_features, num_classes) if dropout == 0 else nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_bottleneck(in_features: int, width: int | None) -> nn.Module:
    """TLlib's bottleneck Linear→width→BN→ReLU (the features the adaptation loss aligns), or identity."""
    if width is None:
        return nn.Identity()
    return nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU())
