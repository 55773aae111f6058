"""LP-FT (Kumar et al. 2022): linear probe for `probe_epochs` epochs, then fine-tune everything.

Fine-tuning with a random head distorts pretrained features; fitting the head first means the
fine-tuning phase starts from a good head and changes the features less (better out of distribution).
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class LPFTConfig(ScheduleConfig):
    name: str = "lp_ft"
    bn_policy: str = "frozen_stats"
    #: Epochs of linear probing (backbone frozen) before full fine-tuning starts.
    probe_epochs: int = 2
    #: LR multiplier for backbone stages in the fine-tuning phase (head stays at the base LR).
    unfrozen_lr_scale: float = 1.0


@SCHEDULES.register("lp_ft", LPFTConfig)
class LPFT(ConfiguredSchedule):
    cfg: LPFTConfig

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set() if epoch < self.cfg.probe_epochs else set(range(num_stages))

    def stage_lr_scales(self, num_stages: int) -> list[float]:
        return [self.cfg.unfrozen_lr_scale] * num_stages
