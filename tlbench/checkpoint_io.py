"""Checkpoint files that are either complete or absent, and one line when one cannot be read.

Lightning's own "atomic" save stages the file in the system temp dir and moves it into place: across
file systems that move is a copy, so a full disk left a partial `last.ckpt` at the final path, which a
later `resume=true` died on. Here the temp file sits beside the target, is synced, then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import WeightsError, one_line
from .interrupts import signals_held


def _local(path) -> bool:
    return "://" not in str(path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to `<dir>/.<name>.tmp-<pid>`, fsync, rename over `path`; the temp file goes on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


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
