"""Quota: a team's limit in milli-GPU (pre-filter), and per-model limits (filter, by node GPU model).

Usage counts everything the team holds, including work placed earlier in this cycle. Work above the
guarantee is borrowed; reclaiming it is preemption's job (``scheduler/preemption.py``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.framework import Candidates, CycleState
from gpufleet.coordinator.scheduler.request import KIND_MIG, Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


def request_milli(req: Request) -> int:
    """milli-GPU a request counts against quotas (a MIG slice: 1000 x compute slices / 7)."""
    if req.kind == KIND_MIG:
        g = int(req.mig_profile.split("g.", 1)[0]) if "g." in req.mig_profile else 1
        return g * 1000 // 7 * req.nodes
    return req.total_milli


class Quota:
    name: ClassVar[str] = "Quota"

    def enabled(self, config: SchedulerConfig) -> bool:
        return any(q.limit_milli for q in config.quotas.values())

    def pre_filter(self, cycle: CycleState, req: Request) -> Result:
        q = cycle.config.team_quota(req.team)
        if q is None or not q.limit_milli:
            return SKIP
        used = cycle.state.team_milli.get(req.team, 0)
        want = request_milli(req)
        if used + want > q.limit_milli:
            return Result(
                Status.UNSCHEDULABLE,
                f"team {req.team or '(none)'} would exceed its GPU limit: uses {used / 1000:g} GPU, "
                f"limit {q.limit_milli / 1000:g}, job needs {want / 1000:g}",
                self.name,
            )
        return SUCCESS

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        q = cycle.config.team_quota(req.team)
        if q is None or not q.per_model:
            return SKIP
        st = cycle.state
        want = request_milli(req)
        over = [
            st.models.ids[m]
            for m, (_, limit) in q.per_model.items()
            if limit and m in st.models.ids and st.team_model_milli.get((req.team, m), 0) + want > limit
        ]
        if over:
            names = "|".join(st.models.names[i] for i in over)
            if cand.narrow(~np.isin(st.n_model[: st.n], over), f"are {names} (team {req.team} at its limit)") == 0:
                return Result(Status.UNSCHEDULABLE, f"team {req.team} is at its {names} limit", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> bool:
        q = cycle.config.team_quota(req.team)
        if q is None or not q.per_model:
            return True
        st = cycle.state
        model = int(st.n_model[i])
        if model < 0:  # mixed or no GPUs: the per-model filter does not drop it
            return True
        name = st.models.names[model]
        limit = q.per_model.get(name, (0, 0))[1]
        return not (limit and st.team_model_milli.get((req.team, name), 0) + request_milli(req) > limit)
