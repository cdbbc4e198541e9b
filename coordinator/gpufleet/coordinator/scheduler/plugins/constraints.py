"""PlacementConstraints filter: provider, region, spot policy and price ceiling from the job's placement.

Nodes without a price label (`gpufleet.io/price-per-gpu-hour-micros`) count as price 0 (owned hardware) and pass any
ceiling; a malformed price passes none.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import Candidates, CycleState
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status
from gpufleet.proto.v1 import types_pb2 as pb


class PlacementConstraints:
    name: ClassVar[str] = "PlacementConstraints"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        if not (req.providers or req.regions or req.max_price_micros) and req.spot not in (
            pb.SPOT_POLICY_NEVER,
            pb.SPOT_POLICY_REQUIRED,
        ):
            return SKIP
        st = cycle.state
        n = st.n
        if req.providers:
            ids = [i for i, p in enumerate(st.providers.names) if p in req.providers]
            cand.narrow(np.isin(st.n_provider[:n], ids), f"not in provider {'/'.join(req.providers)}")
        if req.regions:
            ids = [
                i for i, key in enumerate(st.regions.names) if key in req.regions or key.split("/", 1)[1] in req.regions
            ]
            cand.narrow(np.isin(st.n_region[:n], ids), f"not in region {'/'.join(req.regions)}")
        if req.spot == pb.SPOT_POLICY_NEVER:
            cand.narrow(~st.n_spot[:n], "spot (job says spot: never)")
        elif req.spot == pb.SPOT_POLICY_REQUIRED:
            cand.narrow(st.n_spot[:n], "not spot (job requires spot)")
        if req.max_price_micros:
            cand.narrow(
                st.n_price[:n] <= req.max_price_micros,
                f"above the price ceiling ${req.max_price_micros / 1e6:.2f}/GPU-hour",
            )
        if cand.count == 0:
            return Result(Status.UNSCHEDULABLE, "no node matches the placement constraints", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> bool:
        if not (req.providers or req.regions or req.max_price_micros or req.spot):
            return True
        st = cycle.state
        if req.providers and st.providers.names[int(st.n_provider[i])] not in req.providers:
            return False
        if req.regions:
            key = st.regions.names[int(st.n_region[i])]
            if key not in req.regions and key.split("/", 1)[1] not in req.regions:
                return False
        if req.spot == pb.SPOT_POLICY_NEVER and st.n_spot[i]:
            return False
        if req.spot == pb.SPOT_POLICY_REQUIRED and not st.n_spot[i]:
            return False
        return not (req.max_price_micros and int(st.n_price[i]) > req.max_price_micros)
