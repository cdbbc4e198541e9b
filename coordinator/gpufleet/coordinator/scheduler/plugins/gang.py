"""Gang permit: a multi-node job is placed only when every member is reserved (all-or-nothing)."""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.framework import CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


class Gang:
    name: ClassVar[str] = "Gang"

    def permit(self, cycle: CycleState, req: Request, reserved_members: int) -> Result:
        del cycle  # the decision needs only the count
        if req.nodes <= 1:
            return SKIP
        if reserved_members < req.nodes:
            return Result(
                Status.WAIT, f"only {reserved_members} of {req.nodes} gang members could be reserved", self.name
            )
        return SUCCESS
