"""How many intra-op threads a run uses. PyTorch defaults to one per core, which costs more than it gives
on tiny workloads: a linear head on cached features took 6.1 s for 65 steps on 2 threads vs 0.08 s on 1
when the CPU was shared (issue 19). So tiny runs use one thread, others keep the process's setting."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: Models with at most this many parameters (backbone, bottleneck, head) count as tiny.
TINY_MAX_PARAMS = 100_000


def threads_for(configured: int | None, module) -> int:
    """`trainer.threads` when set; auto: 1 for cached features or a tiny model, else the current setting
    (which OMP_NUM_THREADS or torch.set_num_threads may already have lowered)."""
    import torch

    current = torch.get_num_threads()
    if configured is not None:
        return configured
    from .feature_cache import CachedBackbone

    method = {id(p) for p in module.adapter.parameters()}
    size = sum(p.numel() for p in module.parameters() if id(p) not in method)
    return 1 if isinstance(module.backbone, CachedBackbone) or size <= TINY_MAX_PARAMS else current


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Use `count` threads inside the block and restore the previous number after it (sweeps run many
    runs in one process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
