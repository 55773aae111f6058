"""Freeze the first k stages for the whole run; the rest fine-tune (early layers are the most generic).

`k` counts stages from the stem. A negative k counts from the end: k = -1 freezes all but the last
stage, k = -2 all but the last two, so one config fits backbones of any depth. k = 0 is full fine-tuning;
k = number of stages is a linear probe. A k beyond the backbone's depth fails at the first epoch, when
the number of stages is known.
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig, require


@dataclass
class FreezeFirstKConfig(ScheduleConfig):
    name: str = "freeze_first_k"
    bn_policy: str = "frozen_stats"
    #: Number of leading stages to freeze; negative counts from the end (-1 = all but the last stage).
    k: int = 2


@SCHEDULES.register("freeze_first_k", FreezeFirstKConfig)
class FreezeFirstK(ConfiguredSchedule):
    cfg: FreezeFirstKConfig

    def num_frozen(self, num_stages: int) -> int:
        k = self.cfg.k
        frozen = k if k >= 0 else num_stages + k
        require(
            0 <= frozen <= num_stages,
            "k",
            f"k={k} does not fit a backbone with {num_stages} stages; use -{num_stages} ≤ k ≤ {num_stages}",
        )
        return frozen

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set(range(self.num_frozen(num_stages), num_stages))
