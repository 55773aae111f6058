"""A trained module back from disk: from a checkpoint file (`module_from_checkpoint`, which rebuilds the
model from the run config stored beside the weights) or from a finished MLflow run (`load_run`, the
checkpoint its selection rule chose). The model is assembled exactly as training assembled it
(tlbench/assembly.py), so the restored module is the trained one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytorch_lightning as pl

from .assembly import build_for_inference
from .checkpoint_io import CHECKPOINT_KEY
from .config import RunConfig, to_plain_dict, validate
from .errors import TlbenchError


def load_run(
    run_id: str, uri: str = "", checkpoint_dir: str | Path | None = None, map_location: str = "cpu", *, module_class: type, client=None
) -> "pl.LightningModule":
    """The module of a finished MLflow run with the weights of the checkpoint its selection rule chose, in
    eval mode. Checkpoints stay on the machine that trained (`<checkpoint_dir>/<config hash>/`); pass
    checkpoint_dir when it was relative to another working directory. `client`: the caller's client of
    that store (a run's plan has one), else one is made for `uri`."""
    from omegaconf import OmegaConf

    from .tracking import client_for, resolve_uri

    client = client or client_for(resolve_uri(uri))
    try:
        recorded = client.get_run(run_id)
    except TlbenchError:
        raise
    except Exception as exc:
        raise TlbenchError(f"load_run: no run {run_id} in {resolve_uri(uri)} ({str(exc).splitlines()[0]})") from None
    if "selected_epoch" not in recorded.data.metrics:
        raise TlbenchError(f"load_run: run {run_id} has no selected checkpoint (status {recorded.info.status}); only finished runs do")
    config = OmegaConf.create(Path(client.download_artifacts(run_id, "config.yaml")).read_text())
    run = validate(config)
    folder = Path(checkpoint_dir or run.checkpoint_dir) / recorded.data.tags["config_hash"]
    best = sorted(folder.glob("best-*.ckpt"))  # the run keeps one: save_top_k=1
    if not best:
        raise TlbenchError(f"load_run: no selected checkpoint of run {run_id} in {folder}; pass checkpoint_dir= (the run's was '{run.checkpoint_dir}')")
    from .backbones.weights import WEIGHTS_DIGEST_TAG

    return module_from_checkpoint(
        best[-1],
        run,
        map_location,
        batch_composition=recorded.data.tags.get("batch_composition"),
        module_class=module_class,
        weights_digest=recorded.data.tags.get(WEIGHTS_DIGEST_TAG),
    )


def module_from_checkpoint(
    path: str | Path,
    run_config: RunConfig | dict | None = None,
    map_location: str | None = "cpu",
    batch_composition: str | None = None,
    *,
    module_class: type,
    weights_digest: str | None = None,
) -> "pl.LightningModule":
    """A TransferModule rebuilt from its config with the checkpoint's weights, in eval mode. The config is
    the one stored in the checkpoint, else `run_config`. A backbone that trained on cached features has no
    weights in the checkpoint and keeps the ones its config names (e.g. pretrained). `module_class`: the
    class to build (TransferModule; this layer sits below it, so callers name it). `weights_digest`: the
    sha256 the backbone weights file had when the run trained; a checkpoint without backbone weights is
    refused when the file now differs (its predictions would silently change)."""
    import torch

    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    stored = checkpoint.get(CHECKPOINT_KEY, {})
    if run_config is None and "run" not in stored:
        raise TlbenchError(f"{path}: the checkpoint does not carry its run config; pass run_config= or use tlbench.load_run(run_id)")
    run = run_config if run_config is not None else stored["run"]
    run = run if isinstance(run, RunConfig) else validate(run)
    state = checkpoint["state_dict"]
    has_backbone = any(key.startswith("backbone.") for key in state)
    if not has_backbone and weights_digest:
        _check_weights_unchanged(str(getattr(run.backbone, "weights", "")), weights_digest)
    if has_backbone and hasattr(run.backbone, "weights"):  # the checkpoint has them: no download
        run = dataclasses.replace(run, backbone=dataclasses.replace(run.backbone, weights="none"))
    composition = stored.get("batch_composition") or batch_composition or run.batch_composition
    run = dataclasses.replace(run, batch_composition=composition)
    head_weights = [value for key, value in state.items() if key.startswith("head.") and key.endswith(".weight")]
    module = build_for_inference(run, int(head_weights[-1].shape[0]), composition, module_class)
    # method layers (a discriminator, GroupDRO's domain weights) only shape training: not restored
    state = {key: value for key, value in state.items() if not key.startswith("adapter.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    optional = ("adapter.",) + (() if has_backbone else ("backbone.",))  # method layers only shape training
    if unexpected or [key for key in missing if not key.startswith(optional)]:
        raise TlbenchError(f"{path}: weights do not fit the config's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    module.run_config = to_plain_dict(run)
    return module.eval()


def _check_weights_unchanged(weights: str, recorded: str) -> None:
    from .backbones.weights import weights_file_digest

    now = weights_file_digest(weights)
    if now != recorded:
        state = "is gone" if now is None else f"changed since the run trained (sha256 {recorded[:12]}… then, {now[:12]}… now)"
        raise TlbenchError(
            f"backbone.weights={weights}: the file this run's features came from {state}; restore that file, "
            "or load the run's logged model (it carries its backbone)"
        )
