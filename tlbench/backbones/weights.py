"""The one place that turns `backbone.weights` into tensors.

`weights` is `none`, `imagenet`, a file path, or `runs:/<run_id>/<artifact path>`. ImageNet files are
looked up locally first (bundled package, torch hub cache, Hugging Face cache) and downloaded only
when TLBENCH_OFFLINE is not set and the download address answers a HEAD request within a few seconds,
so an offline machine fails at once with a WeightsError that names the file to fetch and where to put
it. Our own checkpoints are a backbone's `state_dict()`, written by `save_backbone`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import WeightsError
from ..paths import cache_dir

NONE = "none"
IMAGENET = "imagenet"
RUNS_PREFIX = "runs:/"
#: Seconds any one network step of the "is the download host there?" probe may take.
PROBE_TIMEOUT_S = 4.0
#: Socket timeout while downloading, so a stalled transfer fails instead of hanging.
DOWNLOAD_TIMEOUT_S = 60.0


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for one-line WeightsErrors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def is_checkpoint(spec: str) -> bool:
    """True for a file path or runs:/ URI, i.e. weights that `load_backbone_weights` loads."""
    return spec not in (NONE, IMAGENET, "")


# --------------------------------------------------------------------------------------------- ImageNet


@dataclass(frozen=True)
class ImagenetFile:
    """Where one network's ImageNet weights can be found or fetched.

    `path` is where a downloaded or hand-placed copy lives (under the torch hub cache), `candidates`
    are other local copies to try first (a bundled package file, the Hugging Face cache), `download`
    fetches the file and returns where it landed. `hint` is appended to the offline error.
    """

    what: str
    path: Path
    url: Optional[str] = None
    candidates: tuple[Path, ...] = ()
    download: Optional[Callable[[], Path]] = None
    hint: str = ""


def hub_checkpoint_dir() -> Path:
    """torch's own download cache (`$TORCH_HOME/hub/checkpoints`), shared with torchvision and timm."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_reason(url: Optional[str]) -> Optional[str]:
    """Why a download from `url` cannot happen now, or None when it is worth trying."""
    if os.environ.get("TLBENCH_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "TLBENCH_OFFLINE is set"
    if not url:
        return "there is no download address"
    host = urlparse(url).hostname or url
    if "huggingface.co" in host and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if not _answers(url):
        return f"{host} does not answer (checked with a {PROBE_TIMEOUT_S:g} s timeout)"
    return None


@functools.lru_cache(maxsize=None)
def _answers(url: str) -> bool:
    # A HEAD request with a short timeout rather than a bare TCP connect: sandboxes and proxies may
    # accept connections to any address and then never reply, which would hang a real download.
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
        return True
    except urllib.error.HTTPError:
        return True  # the server replied; the download will report what is wrong
    except (OSError, ValueError):
        return False


def resolve_imagenet(spec: ImagenetFile) -> Path:
    """Local file holding `spec`'s ImageNet weights, downloading it when possible."""
    for candidate in (*spec.candidates, spec.path):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    reason = offline_reason(spec.url) if spec.download is not None else "it cannot be downloaded automatically"
    if reason is None:
        try:
            return Path(spec.download())
        except Exception as exc:  # network errors come in many types; all mean the same to the user
            reason = f"the download failed ({type(exc).__name__}: {first_line(exc)})"
    where = f"fetch {spec.url} and save it as {spec.path}" if spec.url else f"place the file at {spec.path}"
    hint = f"; {spec.hint}" if spec.hint else ""
    raise WeightsError(f"backbone.weights=imagenet: no local ImageNet weights for {spec.what} and {reason}; {where}{hint}")


def download_to(url: str, path: Path) -> Path:
    """Download `url` to `path` atomically (a partial file never sits at `path`), checking the hash
    prefix torch-style file names carry (`name-<sha256 prefix>.pth`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        torch.hub.download_url_to_file(url, tmp, hash_prefix=match.group(1) if match else None, progress=False)
        os.replace(tmp, path)
    finally:
        socket.setdefaulttimeout(previous)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ------------------------------------------------------------------------------------ files and runs:/


def read_state_dict(path: str | Path, source: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin (torch.load, weights_only) or .safetensors file; WeightsError if unreadable.

    Accepts a bare state dict or a dict wrapping one under `state_dict`/`model` (common in the wild).
    """
    source = source or str(path)
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone.weights={source}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"backbone.weights={source}: cannot read {path} as a weights file ({first_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"backbone.weights={source}: {path} does not hold a state dict of tensors")
    return dict(data)


#: The sha256 of a local backbone weights file, tagged on the run (restore refuses a replaced file).
WEIGHTS_DIGEST_TAG = "backbone_weights_sha256"


def weights_file_digest(weights: str) -> str | None:
    """sha256 of a local weights file (None for a named source such as `imagenet`, `none` or `runs:/…`,
    whose content cannot change under the same name): recorded with a run, so that a restore which
    rebuilds the backbone from this file can tell it was replaced."""
    path = Path(str(weights)).expanduser()
    if str(weights).startswith(RUNS_PREFIX) or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(source: str, store_uri: str | None = None) -> Path:
    """Local path of a checkpoint given as a file path or `runs:/<run_id>/<artifact path>` (fetched from
    `store_uri`, the run's own store; None: MLflow's current tracking URI). A run plan resolves its
    weights here before any backbone is built, so backbones only ever see local files."""
    if source.startswith(RUNS_PREFIX):
        rest = source[len(RUNS_PREFIX) :].strip("/")
        if "/" not in rest:
            raise WeightsError(f"backbone.weights={source}: expected runs:/<run_id>/<artifact path>")
        import mlflow

        store = store_uri
        run_id, _, artifact = rest.partition("/")
        # a finished run's artifacts never change: fetched once into the cache (not into a new temp folder
        # each time), through a private folder and a rename, so a concurrent reader never sees half a file
        cached = cache_dir("runs", hashlib.sha256(f"{store}|{run_id}".encode()).hexdigest()[:16]) / artifact
        if cached.is_file():
            return cached
        staging = Path(tempfile.mkdtemp(dir=cache_dir("runs")))
        try:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=store, dst_path=str(staging)))
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, cached)
            return cached
        except Exception as exc:
            raise WeightsError(
                f"backbone.weights={source}: cannot fetch the artifact from MLflow (tracking URI {store or mlflow.get_tracking_uri()}): {first_line(exc)}"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone.weights={source}: no such file; use none, imagenet, a checkpoint path or runs:/<run_id>/<path>")
    return path


# ------------------------------------------------------------------------------------- load and save


def load_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches in one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", mismatched)):
        if items:
            shown = ", ".join(items[:3]) + (f", … (+{len(items) - 3})" if len(items) > 3 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise WeightsError(
            f"backbone.weights={source}: does not fit this backbone ({type(module).__name__}) — "
            + "; ".join(problems)
            + " — was it saved from the same backbone config?"
        )
    module.load_state_dict(dict(state_dict), strict=True)


def load_backbone_weights(backbone: nn.Module, source: str) -> None:
    """Load a checkpoint written by `save_backbone` (file path or runs:/ URI) into `backbone`."""
    if source in (NONE, ""):
        return
    if source == IMAGENET:
        raise WeightsError("backbone.weights=imagenet is applied when the backbone is built, not loaded afterwards")
    load_checked(backbone, read_state_dict(resolve_checkpoint(source), source), source)


def save_backbone(backbone: nn.Module, path: str | Path) -> Path:
    """Write `backbone.state_dict()` (CPU tensors) so that `weights: <path>` or runs:/… restores it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
