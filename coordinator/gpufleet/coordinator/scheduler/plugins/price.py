"""Price score: prefer cheaper nodes, by price per GPU-hour (the node's ``gpufleet.io/price-per-gpu-hour-micros``
label; a node without one is owned hardware, price 0).

Absolute, so node-local and cacheable: MAX_SCORE at price 0 falling linearly to 0 at :data:`PRICE_CAP_MICROS`
and above. At the default weight (profiles.py) a difference of $1 per GPU-hour weighs as much as 100 milli-GPU
of expected fragmentation: owned and cheap capacity fills first unless that strands noticeably more GPU share.
No opinion while every node has the same price, so single-site fleets pay nothing for it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.types import MAX_SCORE

PRICE_CAP_MICROS = 10_000_000  # $10 per GPU-hour and above score 0


class Price:
    name: ClassVar[str] = "Price"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64 | None:
        del req  # the price is the node's
        st = cycle.state
        if not st.prices_vary():
            return None
        price = np.minimum(st.n_price[opts.node], PRICE_CAP_MICROS)
        out: I64 = MAX_SCORE - price * MAX_SCORE // PRICE_CAP_MICROS
        return out

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> int | None:
        del req, cols
        st = cycle.state
        if not st.prices_vary():
            return None
        return MAX_SCORE - min(int(st.n_price[i]), PRICE_CAP_MICROS) * MAX_SCORE // PRICE_CAP_MICROS
