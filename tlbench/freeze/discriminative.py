"""Discriminative fine-tuning / layer-wise LR decay: every stage trains, lower stages more slowly.

Stage i (0 = stem) of n gets lr × decay^(n − i): the last stage decay¹, the stem decayⁿ, the head the
base LR. Generic early features move little, task-specific late ones move more (ULMFiT; BEiT/ELECTRA LLRD).
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class DiscriminativeConfig(ScheduleConfig):
    name: str = "discriminative"
    bn_policy: str = "train"
    #: Per-stage LR decay factor in (0, 1]; 1 is plain full fine-tuning.
    decay: float = 0.7


@SCHEDULES.register("discriminative", DiscriminativeConfig)
class Discriminative(ConfiguredSchedule):
    cfg: DiscriminativeConfig

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set(range(num_stages))

    def stage_lr_scales(self, num_stages: int) -> list[float]:
        return [self.cfg.decay ** (num_stages - i) for i in range(num_stages)]
