"""A finished run's selected model as an MLflow model: raw images in, class probabilities out.

`mlflow.pyfunc.load_model("runs:/<id>/model").predict(images)` takes a uint8 (or [0, 1] float) array of
N × C × H × W images as the run's target test set stores them (the signature says which shape) and
returns N × classes probabilities. Preprocessing (resize, normalisation) happens inside the model, so a
user needs tlbench installed but none of its data code. The weights are a slim checkpoint (model state
and run config, no optimizer state) that `TransferModule.load_from_checkpoint` also reads.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

#: The model's artifact folder in its run.
MODEL_PATH = "model"


class TransferClassifier:
    """What `mlflow.pyfunc.load_model` returns the predictions of: raw images → class probabilities."""

    def __init__(self, module):
        self.module = module

    def predict(self, model_input, params=None):
        import numpy as np
        import torch

        from .prediction import predict

        return predict(self.module, torch.as_tensor(np.asarray(model_input))).numpy()


def _load_pyfunc(data_path: str) -> TransferClassifier:
    """MLflow's entry point for this model flavour (`loader_module`): the slim checkpoint → the model."""
    from .module import TransferModule

    return TransferClassifier(TransferModule.load_from_checkpoint(data_path))


#: What loading the model needs besides tlbench itself (listed so MLflow does not infer them: its
#: inference imports the model in a subprocess, several seconds per run); tlbench comes first.
RUNTIME_PACKAGES = ("torch", "torchvision", "pytorch-lightning", "timm", "omegaconf", "numpy", "mlflow")


def tlbench_requirement() -> str:
    """The requirement that installs this tlbench where the model is served: its loader imports tlbench.
    From a git checkout with a remote, that remote at this commit (the code that trained the model);
    otherwise the version."""
    import subprocess

    from . import __version__

    here = Path(__file__).parent
    try:
        remote = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        remote = commit = ""
    if remote and commit:
        return f"tlbench @ git+{remote}@{commit}"
    return f"tlbench=={__version__}"


def runtime_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = [tlbench_requirement()]
    for name in RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def save_slim_checkpoint(module, path: Path) -> Path:
    """Inference weights and run config only: no optimizer state and no method layers (a discriminator
    only shapes training), which is what `module_from_checkpoint` needs; a few hundred KB for small nets."""
    import torch

    from .checkpoint_io import CHECKPOINT_KEY

    state = {k: v for k, v in module.state_dict().items() if not k.startswith("adapter.")}
    torch.save({"state_dict": state, CHECKPOINT_KEY: {"run": module.run_config, "batch_composition": module.batch_composition}}, path)
    return path


def log_model(recorder, module, example_images, folder: Path) -> None:
    """Save `module` (its current, i.e. selected, weights) as an MLflow pyfunc model with a signature and
    an input example of a few raw target images, and log it as the run's `model/` artifact folder.
    (save_model + log_artifacts rather than the fluent log_model: no active-run state, which would end
    the run early.)"""
    import shutil

    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from .prediction import predict

    checkpoint = save_slim_checkpoint(module, folder / "model.ckpt")
    example = np.asarray(example_images)
    signature = infer_signature(example, predict(module, torch.as_tensor(example)).numpy())
    local = folder / MODEL_PATH
    shutil.rmtree(local, ignore_errors=True)
    mlflow.pyfunc.save_model(
        path=str(local),
        loader_module=__name__,
        data_path=str(checkpoint),
        signature=signature,
        input_example=example,
        pip_requirements=runtime_requirements(),
    )
    recorder.client.log_artifacts(recorder.run_id, str(local), MODEL_PATH)
