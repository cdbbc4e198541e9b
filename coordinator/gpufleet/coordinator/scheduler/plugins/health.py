"""NodeHealth filter: only READY, uncordoned nodes (GPU health is per GPU, in GpuFit and Mig).

Candidates start from the live node slots (``Scheduler.filter``), so gone nodes never reach a filter."""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.framework import Candidates, CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


class NodeHealth:
    name: ClassVar[str] = "NodeHealth"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        del req  # health does not depend on the request
        if cycle.prechecked:
            return SKIP
        st = cycle.state
        n = st.n
        if not cand.narrow(st.n_ready[:n], "not ready, cordoned or draining"):
            return Result(Status.UNSCHEDULABLE, "no ready node", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> bool:
        del req
        return cycle.prechecked or bool(cycle.state.n_ready[i])
