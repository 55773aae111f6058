"""Where tlbench keeps its configs, generated data, caches and user datasets (overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path

#: The Hydra config tree (conf/ beside the package: an editable install keeps it in the checkout).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def cache_dir(*parts: str) -> Path:
    """$TLBENCH_CACHE or ~/.cache/tlbench: generated datasets and frozen-feature caches."""
    root = Path(os.environ.get("TLBENCH_CACHE") or Path.home() / ".cache" / "tlbench")
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only or missing mount
        from .errors import DataError

        raise DataError(f"cache folder {path}: cannot create it ({exc.strerror or exc}); point TLBENCH_CACHE to a writable folder") from None
    return path


def data_root(configured: str | None) -> Path:
    """data.root, else $TLBENCH_DATA, else ~/.cache/tlbench/data: where user-provided datasets live."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("TLBENCH_DATA"):
        return Path(os.environ["TLBENCH_DATA"]).expanduser()
    return cache_dir("data")
