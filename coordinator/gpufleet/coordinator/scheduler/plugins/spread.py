"""Spread score, only for jobs that ask for it (PlacementPolicy.spread): prefer the emptiest node."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options, normalize
from gpufleet.coordinator.scheduler.request import MILLI, Request


class Spread:
    name: ClassVar[str] = "Spread"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        if not req.spread:
            return np.zeros(len(opts), dtype=np.int64)
        st = cycle.state
        nodes = opts.node
        cap = np.maximum(st.n_usable[nodes], 1) * MILLI
        free_share = st.n_free_milli[nodes] / cap + st.n_free_cpu[nodes] / np.maximum(st.n_cpu[nodes], 1)
        return normalize(free_share.astype(np.float64))
