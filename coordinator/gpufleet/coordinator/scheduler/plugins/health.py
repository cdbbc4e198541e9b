"""NodeHealth filter: only live, READY, uncordoned nodes (GPU health is per GPU, in GpuFit and Mig)."""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.framework import Candidates, CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SUCCESS, Result, Status


class NodeHealth:
    name: ClassVar[str] = "NodeHealth"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        del req  # health does not depend on the request
        st = cycle.state
        n = st.n
        cand.narrow(st.n_alive[:n], "gone")
        if not cand.narrow(st.n_ready[:n], "not ready, cordoned or draining"):
            return Result(Status.UNSCHEDULABLE, "no ready node", self.name)
        return SUCCESS
