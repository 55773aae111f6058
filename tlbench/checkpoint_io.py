"""Checkpoint files that are either complete or absent, and one line when one cannot be read.

Lightning's own "atomic" save stages the file in the system temp dir and moves it into place: across
file systems that move is a copy, so a full disk left a partial `last.ckpt` at the final path, which a
later `resume=true` died on. Here the temp file sits beside the target, is synced, then renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .atomic_files import atomic_write
from .errors import WeightsError, one_line
from .interrupts import signals_held

#: Key of the run config inside a checkpoint written by a module that knows its config: what rebuilds
#: the model from the file alone (tlbench/restore.py).
CHECKPOINT_KEY = "tlbench"


def _local(path) -> bool:
    return "://" not in str(path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file renamed over `path` (atomic_files.atomic_write)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: atomic local writes that a signal does not cut short; an unreadable
    checkpoint is one WeightsError line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with signals_held():  # a Ctrl-C/SIGTERM mid-write interrupts right after, with the checkpoint kept
            atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: Optional[bool] = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as exc:
            if not _local(path):
                raise
            raise WeightsError(
                f"checkpoint {path} cannot be read, it is truncated or corrupt ({one_line(exc, with_type=True)}); "
                "run again without resume=true to start over (its folder is cleared), or restore the file"
            ) from None
