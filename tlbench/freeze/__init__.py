"""Freezing schedules: one file per schedule, each registers itself in SCHEDULES."""

from ..registry import Registry
from .base import BN_POLICIES, FreezeSchedule

SCHEDULES: Registry[FreezeSchedule] = Registry("freeze", package=__name__)

__all__ = ["BN_POLICIES", "SCHEDULES", "FreezeSchedule"]
