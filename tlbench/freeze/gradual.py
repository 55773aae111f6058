"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): the head trains alone first, then one more
backbone stage joins every `every_n_epochs` epochs, from the top (last stage) down.

Top layers are the most task-specific, so they adapt first while the freshly initialised head stops
sending large random gradients into the generic lower layers.
"""

from dataclasses import dataclass

from . import SCHEDULES
from .common import ConfiguredSchedule, ScheduleConfig


@dataclass
class GradualConfig(ScheduleConfig):
    name: str = "gradual"
    bn_policy: str = "frozen_stats"
    #: Epochs between unfreezing one stage and the next (the first epoch always trains the head only).
    every_n_epochs: int = 1
    #: LR multiplier for backbone stages once unfrozen (head stays at the base LR).
    unfrozen_lr_scale: float = 1.0


@SCHEDULES.register("gradual", GradualConfig)
class GradualUnfreeze(ConfiguredSchedule):
    cfg: GradualConfig

    def trainable_stages(self, epoch: int, num_stages: int) -> set[int]:
        unfrozen = min(num_stages, epoch // self.cfg.every_n_epochs)
        return set(range(num_stages - unfrozen, num_stages))

    def stage_lr_scales(self, num_stages: int) -> list[float]:
        return [self.cfg.unfrozen_lr_scale] * num_stages
