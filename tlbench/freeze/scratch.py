"""Training from scratch: the same backbone with random weights, every stage trains.

The lower bound that shows what pretraining is worth; `uses_pretrained = False` tells the run builder
to skip loading weights.
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class ScratchConfig(ScheduleConfig):
    name: str = "scratch"
    bn_policy: str = "train"


@SCHEDULES.register("scratch", ScratchConfig)
class Scratch(ConfiguredSchedule):
    uses_pretrained = False

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set(range(num_stages))
