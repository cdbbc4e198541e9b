"""NodeResources filter: free CPU millicores and memory on the node (each gang member needs them)."""

from __future__ import annotations

from typing import ClassVar

from gpufleet.coordinator.scheduler.framework import Candidates, CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


class NodeResources:
    name: ClassVar[str] = "NodeResources"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        if cycle.prechecked or (not req.cpu_milli and not req.memory_mib):
            return SKIP
        st = cycle.state
        n = st.n
        if req.cpu_milli:
            cand.narrow(st.n_free_cpu[:n] >= req.cpu_milli, f"lack {req.cpu_milli}m free CPU")
        if req.memory_mib:
            cand.narrow(st.n_free_mem[:n] >= req.memory_mib, f"lack {req.memory_mib} MiB free memory")
        if cand.count == 0:
            return Result(Status.UNSCHEDULABLE, "no node has the CPU and memory free", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> bool:
        if cycle.prechecked:
            return True
        st = cycle.state
        return bool(st.n_free_cpu[i] >= req.cpu_milli and st.n_free_mem[i] >= req.memory_mib)
