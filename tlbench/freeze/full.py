"""Full fine-tuning: every stage trains from the first epoch at the base learning rate."""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class FullConfig(ScheduleConfig):
    name: str = "full"
    bn_policy: str = "train"


@SCHEDULES.register("full", FullConfig)
class FullFineTune(ConfiguredSchedule):
    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set(range(num_stages))
