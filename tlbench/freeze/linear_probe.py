"""Linear probe (feature extraction): the whole backbone stays frozen, only the head trains.

Measures how linearly separable the pretrained features already are; with BatchNorm statistics frozen
(the default) the features are exactly the pretrained ones, so they could be cached.
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class LinearProbeConfig(ScheduleConfig):
    name: str = "linear_probe"
    bn_policy: str = "frozen_stats"


@SCHEDULES.register("linear_probe", LinearProbeConfig)
class LinearProbe(ConfiguredSchedule):
    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        return set()
