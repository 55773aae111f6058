"""Any timm model as a backbone (family `timm`, field `model`).

Stages come from the model's own `group_matcher` (the grouping timm uses for layer-wise LR decay), so
they follow each architecture's stem/stage layout; preprocessing comes from its `pretrained_cfg`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch import nn

from ..errors import ConfigError, WeightsError
from . import BACKBONES
from ._stages import WrappedBackbone
from .base import Backbone, Preprocessing
from .weights import (
    IMAGENET,
    ImagenetFile,
    download_to,
    first_line,
    hub_checkpoint_dir,
    is_checkpoint,
    load_backbone_weights,
    resolve_imagenet,
)


@dataclass
class TimmConfig:
    family: str = "timm"
    #: Run names and tables call it by its model, not by the family.
    name: str = "${.model}"
    #: Any name from `timm.list_models()`, optionally with a pretrained tag (`resnet18.a1_in1k`).
    model: str = "resnet18"
    weights: str = "none"
    #: Image side fed to the model; None = the weights' own size (pretrained_cfg input_size).
    input_size: Optional[int] = None
    #: True: timm's coarse groups (stem, then one stage per resolution stage); False: one per block.
    coarse: bool = True


Matcher = Union[dict, Callable[[str], Any]]


def timm_stage_groups(net: nn.Module, coarse: bool = True, matcher: Optional[Matcher] = None) -> list[list[str]]:
    """Ordered parameter-name groups of a timm model, by timm's own `group_parameters`.

    The matcher is the model's `group_matcher` (the grouping timm uses for layer-wise LR decay) unless
    one is given; models without one get a group per top-level child. Unmatched names (heads, final
    norms) come last, as timm orders them.
    """
    from timm.models import group_parameters

    if matcher is None:
        try:
            matcher = net.group_matcher(coarse=coarse)
        except (AttributeError, NotImplementedError):
            order = {child: i for i, (child, _) in enumerate(net.named_children())}

            def matcher(name: str) -> int:
                return order.get(name.split(".")[0], -1)

    groups = group_parameters(net, matcher)
    return [groups[index] for index in sorted(groups)]


def check_timm_name(model: str) -> None:
    import timm

    if timm.is_model(model):
        return
    close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
    suggestion = f"close names: {', '.join(close)}; " if close else ""
    raise ConfigError(f"backbone.model: unknown timm model '{model}'; {suggestion}list all with: python -c \"import timm; print(timm.list_models())\"")


def timm_imagenet_file(model: str) -> ImagenetFile:
    """Where timm's default ImageNet weights for `model` live: its Hugging Face hub repo, else its URL."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"backbone.weights=imagenet: timm has no pretrained weights for '{model}'")
    hub = hub_checkpoint_dir()
    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "model.safetensors"
        repo = cfg.hf_hub_id
        url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
        path = hub / f"{repo.split('/')[-1]}{Path(filename).suffix}"

        def download() -> Path:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo, filename))

        candidates = tuple(_hf_cached(repo, name) for name in dict.fromkeys([filename, "pytorch_model.bin"]))
        return ImagenetFile(f"timm {model}", path, url, tuple(c for c in candidates if c), download)
    path = hub / Path(cfg.url).name
    return ImagenetFile(f"timm {model}", path, cfg.url, (), lambda: download_to(cfg.url, path))


def _hf_cached(repo: str, filename: str) -> Optional[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def create_timm_net(model: str, input_size: Optional[int], pretrained_file: Optional[Path] = None) -> nn.Module:
    """timm model without classifier (num_classes=0, global pooling), optionally loaded from a local file.

    Models with a fixed input size (ViTs) are built for `input_size`; timm resamples position
    embeddings when it loads weights made for another size.
    """
    import timm
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model)
    kwargs: dict[str, Any] = {}
    if cfg is not None and cfg.fixed_input_size and input_size and input_size != cfg.input_size[-1]:
        kwargs["img_size"] = input_size
    if pretrained_file is None:
        return timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    overlay = dict(file=str(pretrained_file), source="", custom_load=pretrained_file.suffix == ".npz")
    try:
        return timm.create_model(model, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
    except Exception as exc:
        raise WeightsError(f"backbone.weights=imagenet: cannot load {pretrained_file} into timm {model}: {first_line(exc)}") from None


def wrap_timm_net(
    net: nn.Module,
    input_size: Optional[int],
    coarse: bool = True,
    matcher: Optional[Matcher] = None,
) -> WrappedBackbone:
    cfg = net.pretrained_cfg
    size = input_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    preprocessing = Preprocessing(
        input_size=size,
        in_chans=int(cfg.get("input_size", (3,))[0]),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )
    out_features = getattr(net, "head_hidden_size", None) or net.num_features
    return WrappedBackbone(net, timm_stage_groups(net, coarse, matcher), out_features, preprocessing)


@BACKBONES.register("timm", TimmConfig)
def build_timm(cfg: TimmConfig) -> Backbone:
    check_timm_name(cfg.model)
    pretrained = resolve_imagenet(timm_imagenet_file(cfg.model)) if cfg.weights == IMAGENET else None
    backbone = wrap_timm_net(create_timm_net(cfg.model, cfg.input_size, pretrained), cfg.input_size, cfg.coarse)
    if is_checkpoint(cfg.weights):
        load_backbone_weights(backbone, cfg.weights)
    return backbone
