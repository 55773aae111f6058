"""How many intra-op threads a run uses. PyTorch defaults to one per core, which buys nothing on a
linear head over cached features and costs CPU (and, when the CPU is shared, wall time: 65 head steps
took 6.1 s on 2 threads vs 0.08 s on 1 in issue 19). Measured on an idle 2-core machine (whole commands timed in
3 interleaved pairs): 1,000 cached-feature head steps, 1 vs 2 threads: wall 1.03x, CPU 0.77x; small_cnn trained
on 32 px digits, 500 steps: wall 1.58x slower on 1 thread. So only cached-feature runs drop to one
thread; networks keep the process's setting (set trainer.threads=1 or OMP_NUM_THREADS=1 when several
workers share the cores)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def threads_for(configured: int | None, module) -> int:
    """`trainer.threads` when set; auto: 1 for a head on cached features, else the current setting (which
    OMP_NUM_THREADS or torch.set_num_threads may already have lowered)."""
    import torch

    if configured is not None:
        return configured
    from .feature_cache import CachedBackbone

    return 1 if isinstance(module.backbone, CachedBackbone) else torch.get_num_threads()


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
