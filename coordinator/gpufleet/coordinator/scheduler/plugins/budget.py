"""Budget pre-filter: hold a team's new work while its budget is exhausted (hook in SchedulerConfig)."""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.framework import CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SUCCESS, Result, Status


class Budget:
    name: ClassVar[str] = "Budget"

    def enabled(self, config: SchedulerConfig) -> bool:
        return config.budget_exhausted is not None or bool(config.budget_exhausted_teams)

    def pre_filter(self, cycle: CycleState, req: Request) -> Result:
        if cycle.config.is_budget_exhausted(req.team):
            return Result(
                Status.UNSCHEDULABLE,
                f"held: team {req.team or '(none)'} has exhausted its budget; raise it (gpufleet cost) "
                "or wait for the next budget period",
                self.name,
            )
        return SUCCESS
