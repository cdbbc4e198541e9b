"""Baseline placement policies for the benchmark only (not offered by the product): first-fit and best-fit.

Both reuse the product's filters (so they obey the same constraints) and replace the scores:
* first-fit: the first node in inventory order that fits, and on it the first GPU that fits;
* best-fit: the node (then GPU) left with the least free GPU share after the placement (Weng et al.'s
  "Best-fit" baseline packs by remaining resources the same way).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options, Profile, normalize
from gpufleet.coordinator.scheduler.profiles import DEFAULT_PROFILE
from gpufleet.coordinator.scheduler.request import MILLI, Request


class FirstFit:
    name: ClassVar[str] = "FirstFit"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        del req  # first-fit looks at positions only
        order = opts.node * cycle.state.G + np.maximum(opts.col, 0)
        return normalize(order.astype(np.float64), higher_is_better=False)

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> int:
        raise NotImplementedError("scaled across nodes: the profile sets node_local_scores=False")


class BestFit:
    name: ClassVar[str] = "BestFit"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        st = cycle.state
        used = req.gpus * req.milli_per_gpu
        node_left = (st.n_free_milli[opts.node] - used).astype(np.float64)
        gpu_left = np.where(opts.col >= 0, st.g_free_milli[opts.node, np.maximum(opts.col, 0)] - used, 0)
        cpu_left = (st.n_free_cpu[opts.node] - req.cpu_milli) / np.maximum(st.n_cpu[opts.node], 1)
        return normalize(node_left * 2 * MILLI + gpu_left + cpu_left, higher_is_better=False)

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> int:
        raise NotImplementedError("scaled across nodes: the profile sets node_local_scores=False")


# scaled across nodes / by position: the per-node score cache does not apply
FIRST_FIT = Profile(
    "first-fit", DEFAULT_PROFILE.pre_filter, DEFAULT_PROFILE.filter, ((FirstFit(), 1),), node_local_scores=False
)
BEST_FIT = Profile(
    "best-fit", DEFAULT_PROFILE.pre_filter, DEFAULT_PROFILE.filter, ((BestFit(), 1),), node_local_scores=False
)
