"""Spread score, only for jobs that ask for it (PlacementPolicy.spread) unless ``always``: prefer the emptiest
node (absolute score: free GPU share + free CPU share)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options
from gpufleet.coordinator.scheduler.request import MILLI, Request
from gpufleet.coordinator.scheduler.types import MAX_SCORE


class Spread:
    name: ClassVar[str] = "Spread"

    def __init__(self, always: bool = False) -> None:
        self.always = always

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64 | None:
        if not (req.spread or self.always):
            return None
        st = cycle.state
        nodes = opts.node
        cap = np.maximum(st.n_usable[nodes], 1) * MILLI
        free_share = st.n_free_milli[nodes] / cap + st.n_free_cpu[nodes] / np.maximum(st.n_cpu[nodes], 1)
        out: I64 = np.rint(np.minimum(np.maximum(free_share / 2.0, 0.0), 1.0) * MAX_SCORE).astype(np.int64)
        return out

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> int | None:
        del cols
        if not (req.spread or self.always):
            return None
        st = cycle.state
        cap = max(int(st.n_usable[i]), 1) * MILLI
        free_share = int(st.n_free_milli[i]) / cap + int(st.n_free_cpu[i]) / max(int(st.n_cpu[i]), 1)
        return round(min(max(free_share / 2.0, 0.0), 1.0) * MAX_SCORE)
