"""Stages for third-party networks (torchvision, timm) that keep their own forward.

Such a network is split into ordered groups of parameter names; each group becomes a stage module
that *refers to* the network's submodules (and loose parameters such as ViT's class token) without
copying them. The network stays the only registered child of the backbone, so state_dict keys are the
network's own and no tensor is stored or counted twice.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from .base import Backbone, Preprocessing


class StageGroup(nn.Module):
    """Several submodules and loose parameters of one network acting as one stage.

    It only owns them for freezing, BatchNorm modes and param groups; the network's forward runs them.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], params: list[tuple[str, nn.Module, str]]):
        super().__init__()
        for name, module in modules:
            self.add_module(_attr_name(name, self._modules), module)
        # owner module + attribute of each loose parameter, kept in a plain dict (not registered)
        # so `refresh` can follow the network if a conversion ever replaces the Parameter object.
        self._loose: dict[str, tuple[nn.Module, str]] = {}
        for name, owner, attr in params:
            local = _attr_name(name, self._parameters)
            self.register_parameter(local, owner._parameters[attr])
            self._loose[local] = (owner, attr)

    def refresh(self) -> None:
        for local, (owner, attr) in self._loose.items():
            if self._parameters[local] is not owner._parameters[attr]:
                self._parameters[local] = owner._parameters[attr]

    def forward(self, *args, **kwargs):
        raise RuntimeError("a StageGroup only groups parameters of a network; call the backbone instead")


def _attr_name(dotted: str, taken) -> str:
    base = dotted.replace(".", "_") or "root"
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def stages_from_groups(net: nn.Module, groups: list[list[str]]) -> list[nn.Module]:
    """Stage modules for ordered groups of `net`'s parameter names, which must cover every parameter once.

    A stage that is exactly one submodule is that submodule itself (e.g. `net.layer1`); otherwise a
    StageGroup holding the largest submodules whose parameters all belong to the stage.
    """
    groups = [list(g) for g in groups if g]
    names = [n for n, _ in net.named_parameters()]
    counts = Counter(n for g in groups for n in g)
    twice = [n for n, c in counts.items() if c > 1]
    missing = [n for n in names if n not in counts]
    unknown = [n for n in counts if n not in set(names)]
    if twice or missing or unknown:
        raise ValueError(
            f"stage split of {type(net).__name__} is not an exact cover of its parameters: "
            f"in two stages {twice[:3]}, in none {missing[:3]}, not parameters {unknown[:3]}"
        )
    return [_stage_view(net, set(group)) for group in groups]


def _stage_view(net: nn.Module, wanted: set[str]) -> nn.Module:
    modules: list[tuple[str, nn.Module]] = []
    loose: list[tuple[str, nn.Module, str]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        own = {prefix + n for n, _ in module.named_parameters()}
        if own and own <= wanted:
            modules.append((prefix[:-1], module))
            return
        if not own & wanted:
            return
        for attr, _ in module.named_parameters(recurse=False):
            if prefix + attr in wanted:
                loose.append((prefix + attr, module, attr))
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(net, "")
    if len(modules) == 1 and not loose:
        return modules[0][1]
    return StageGroup(modules, loose)


class WrappedBackbone(Backbone):
    """A network with its own forward returning pooled features (classifier already removed).

    `net` is the only registered child; `stage_modules` is a plain attribute (not a child) whose stages
    are views onto `net`'s submodules, so freezing a stage acts on the network itself.
    """

    def __init__(self, net: nn.Module, groups: list[list[str]], out_features: int, preprocessing: Preprocessing):
        super().__init__()
        self.net = net
        object.__setattr__(self, "stage_modules", nn.ModuleList(stages_from_groups(net, groups)))
        self.out_features = int(out_features)
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _apply(self, fn, recurse=True):
        # .to()/.half() normally keep Parameter objects (in-place .data swap); re-point loose
        # parameters in case a conversion created new ones.
        result = super()._apply(fn, recurse)
        for stage in self.stage_modules:
            if isinstance(stage, StageGroup):
                stage.refresh()
        return result
