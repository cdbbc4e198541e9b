"""BinPack score: prefer the fullest node (and, for a fraction or MIG slice, the fullest GPU).

Scores are absolute (not min-max scaled), so a node's score depends on that node only. CPU-only jobs prefer nodes with the least idle GPU capacity, so they do not strand GPUs behind full CPUs.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options
from gpufleet.coordinator.scheduler.request import KIND_CPU, MILLI, Request
from gpufleet.coordinator.scheduler.types import MAX_SCORE


class BinPack:
    """Absolute scores in 0..MAX_SCORE (node-local, cacheable)."""

    name: ClassVar[str] = "BinPack"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        st = cycle.state
        nodes = opts.node
        if req.kind == KIND_CPU:
            idle = np.minimum(st.n_free_milli[nodes], 8 * MILLI) / (8 * MILLI)
            cpu_used = 1.0 - (st.n_free_cpu[nodes] - req.cpu_milli) / np.maximum(st.n_cpu[nodes], 1)
            return _scale((cpu_used + 1.0 - idle) / 2.0)
        cap = np.maximum(st.n_usable[nodes], 1) * MILLI
        used_after = cap - st.n_free_milli[nodes] + req.gpus * req.milli_per_gpu
        raw = np.minimum(used_after / cap, 1.0)
        if len(opts) and int(opts.col[0]) >= 0:
            gpu_used = (MILLI - st.g_free_milli[nodes, opts.col]) / MILLI
            raw = (raw + 2.0 * gpu_used) / 3.0
        return _scale(raw)

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> list[int] | int:
        st = cycle.state
        free_milli = int(st.n_free_milli[i])
        if req.kind == KIND_CPU:
            idle = min(free_milli, 8 * MILLI) / (8 * MILLI)
            cpu_used = 1.0 - (int(st.n_free_cpu[i]) - req.cpu_milli) / max(int(st.n_cpu[i]), 1)
            return _scale_one((cpu_used + 1.0 - idle) / 2.0)
        cap = max(int(st.n_usable[i]), 1) * MILLI
        raw = min((cap - free_milli + req.gpus * req.milli_per_gpu) / cap, 1.0)
        if cols[0] < 0:
            return _scale_one(raw)
        free = st.g_free_milli[i].tolist()
        return [_scale_one((raw + 2.0 * ((MILLI - free[c]) / MILLI)) / 3.0) for c in cols]


def _scale_one(x: float) -> int:
    return round(min(max(x, 0.0), 1.0) * MAX_SCORE)


def _scale(x: npt.NDArray[np.float64]) -> I64:
    out: I64 = np.rint(np.minimum(np.maximum(x, 0.0), 1.0) * MAX_SCORE).astype(np.int64)
    return out
