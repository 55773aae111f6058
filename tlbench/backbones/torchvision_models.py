"""Any torchvision classification model as a backbone (family `torchvision`, field `model`).

The model is built as torchvision defines it, ImageNet weights (if asked for) are loaded into the
complete model, then the final classification layer and auxiliary heads are removed; hidden classifier
layers (VGG's fc6/fc7, MobileNetV3's 1024-d layer) stay, as they are pretrained features too.
Stages are found generically by walking the model in registration (= forward) order.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from . import BACKBONES
from ._stages import WrappedBackbone
from .base import Backbone, Preprocessing
from .weights import (
    IMAGENET,
    ImagenetFile,
    download_to,
    hub_checkpoint_dir,
    is_checkpoint,
    load_backbone_weights,
    load_checked,
    read_state_dict,
    resolve_imagenet,
)

#: Containers that hold a whole network's sequence of stages rather than being one stage themselves.
TRUNKS = ("features", "trunk_output", "layers", "encoder", "blocks")
#: Spatial pooling between convolutions: a boundary between stages of plain conv layers (VGG, stems).
POOLS = (nn.MaxPool2d, nn.AvgPool2d)
DROPOUTS = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
NUM_CLASSES = 1000


@dataclass
class TorchvisionConfig:
    family: str = "torchvision"
    #: Run names and tables call it by its model (resnet18), not by the family.
    name: str = "${.model}"
    #: Any name from `torchvision.models.list_models(module=torchvision.models)`.
    model: str = "resnet18"
    weights: str = "none"
    #: Image side fed to the model; None = the weights' own crop size (224, 299 for inception_v3).
    input_size: Optional[int] = None


def classification_models() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def check_model_name(model: str) -> None:
    names = classification_models()
    if model in names:
        return
    close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
    suggestion = f"close names: {', '.join(close)}; " if close else ""
    raise ConfigError(
        f"backbone.model: unknown torchvision classification model '{model}'; {suggestion}list all with: "
        'python -c "import torchvision; print(torchvision.models.list_models(module=torchvision.models))"'
    )


def default_weights(model: str) -> Any:
    """The model's DEFAULT weights enum entry (url, transforms metadata), or None if it has none."""
    import torchvision.models

    try:
        return torchvision.models.get_model_weights(model).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def preprocessing_for(model: str, input_size: Optional[int]) -> Preprocessing:
    weights = default_weights(model)
    if weights is None:
        return Preprocessing(input_size=input_size or 224)
    transforms = weights.transforms()
    crop = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
    return Preprocessing(
        input_size=input_size or int(crop),
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
    )


def imagenet_file(model: str) -> ImagenetFile:
    weights = default_weights(model)
    if weights is None:
        raise WeightsError(f"backbone.weights=imagenet: torchvision has no pretrained weights for '{model}'")
    path = hub_checkpoint_dir() / weights.url.rsplit("/", 1)[-1]
    return ImagenetFile(f"torchvision {model}", path, weights.url, (), lambda: download_to(weights.url, path))


def build_kwargs(model: str, input_size: Optional[int]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if model in ("inception_v3", "googlenet"):
        # transform_input as for the pretrained Google weights (torchvision sets it when it loads them);
        # init_weights=False: torchvision's announced default, avoids a slow scipy-based init.
        kwargs.update(transform_input=True, init_weights=False)
    if model.startswith("vit_") and input_size:
        kwargs["image_size"] = input_size  # ViT checks the input size; embeddings are resized on load
    return kwargs


def adapt_imagenet(model: str, net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if model.startswith("vit_"):
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(net.image_size, net.patch_size, state)
    return state


def strip_heads(net: nn.Module) -> int:
    """Remove auxiliary classifiers and the final classification layer in place; return the feature size."""
    for aux in ("AuxLogits", "aux1", "aux2"):
        if getattr(net, aux, None) is not None:
            setattr(net, aux, None)
    if hasattr(net, "aux_logits"):
        net.aux_logits = False
    name, final = last_classification_layer(net)
    out_features = final.in_features if isinstance(final, nn.Linear) else final.in_channels
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential):
        items = list(parent._modules.items())
        index = [m for _, m in items].index(final)
        before = items[:index]
        while before and isinstance(before[-1][1], DROPOUTS):
            before.pop()  # dropout right before the classifier belongs to the new head, not the features
        after = [(k, m) for k, m in items[index + 1 :] if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten))]
        grand_name, _, parent_attr = parent_name.rpartition(".")
        setattr(net.get_submodule(grand_name), parent_attr, nn.Sequential(OrderedDict(before + after)))
    else:
        setattr(parent, attr, nn.Identity())
        for sibling_name, sibling in list(parent.named_children()):
            if isinstance(sibling, DROPOUTS):  # e.g. inception's dropout before fc
                setattr(parent, sibling_name, nn.Identity())
    return int(out_features)


def last_classification_layer(net: nn.Module) -> tuple[str, nn.Module]:
    found = [
        (name, m)
        for name, m in net.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES) or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)
    ]
    if not found:
        raise ConfigError(f"backbone.model: cannot find the {NUM_CLASSES}-class output layer of {type(net).__name__}")
    return found[-1]


def has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def is_layer(module: nn.Module) -> bool:
    """A single layer or a flat group of layers (Conv+BN+act): no parameterised grandchildren."""
    return all(not has_params(grandchild) for child in module.children() for grandchild in child.children())


def walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """(kind, parameter names) in forward order, kind being 'param' (a loose parameter such as ViT's
    class token), 'layer', 'block' or 'pool' (no parameters); containers named in TRUNKS are expanded."""
    for name, _ in module.named_parameters(recurse=False):
        yield "param", [prefix + name]
    for name, child in module.named_children():
        full = prefix + name
        if name in TRUNKS and has_params(child):
            yield from walk(child, full + ".")
        elif isinstance(child, POOLS):
            yield "pool", []
        elif has_params(child):
            yield ("layer" if is_layer(child) else "block"), [f"{full}.{n}" for n, _ in child.named_parameters()]


def stage_groups(net: nn.Module) -> list[list[str]]:
    """Each block is a stage; a run of plain layers (and loose parameters) between blocks is one stage,
    split at pooling layers. ResNet → stem, layer1..4; VGG → one stage per pooling block, then fc6/fc7."""
    groups: list[list[str]] = []
    run: list[str] = []
    for kind, names in walk(net):
        if kind in ("pool", "block") and run:
            groups.append(run)
            run = []
        if kind == "block":
            groups.append(names)
        else:
            run.extend(names)
    if run:
        groups.append(run)
    return groups


@BACKBONES.register("torchvision", TorchvisionConfig)
def build_torchvision(cfg: TorchvisionConfig) -> Backbone:
    import torchvision.models

    check_model_name(cfg.model)
    preprocessing = preprocessing_for(cfg.model, cfg.input_size)
    pretrained = resolve_imagenet(imagenet_file(cfg.model)) if cfg.weights == IMAGENET else None
    net = torchvision.models.get_model(cfg.model, weights=None, **build_kwargs(cfg.model, preprocessing.input_size))
    if pretrained is not None:
        # into the complete model first, so the file must match torchvision's architecture exactly
        load_checked(net, adapt_imagenet(cfg.model, net, read_state_dict(pretrained, IMAGENET)), IMAGENET)
    out_features = strip_heads(net)
    backbone = WrappedBackbone(net, stage_groups(net), out_features, preprocessing)
    if is_checkpoint(cfg.weights):
        load_backbone_weights(backbone, cfg.weights)
    return backbone
