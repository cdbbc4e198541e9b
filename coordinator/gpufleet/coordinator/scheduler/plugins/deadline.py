"""Deadline pre-filter: a job that can no longer meet its deadline is told so instead of waiting silently.

The run time estimate is ``max_runtime_s`` (the job's own upper bound); a job without one only fails once
the deadline has passed.
"""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.framework import CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


class Deadline:
    name: ClassVar[str] = "Deadline"

    def enabled(self, config: SchedulerConfig) -> bool:
        del config  # deadlines come with the jobs
        return True

    def pre_filter(self, cycle: CycleState, req: Request) -> Result:
        if not req.deadline_ms:
            return SKIP
        now = cycle.now_ms
        if now >= req.deadline_ms:
            return Result(
                Status.UNRESOLVABLE,
                f"deadline passed {(now - req.deadline_ms) / 1000:.0f}s ago; cancel it or resubmit with a later "
                "deadline_ms",
                self.name,
            )
        if req.max_runtime_s and now + req.max_runtime_s * 1000 > req.deadline_ms:
            left = (req.deadline_ms - now) / 1000
            return Result(
                Status.UNRESOLVABLE,
                f"cannot meet its deadline: it may run {req.max_runtime_s}s but only {left:.0f}s are left; "
                "lower max_runtime_s or move the deadline",
                self.name,
            )
        return SUCCESS
