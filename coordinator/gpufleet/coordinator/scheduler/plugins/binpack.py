"""BinPack score: prefer the fullest node (and, for a fraction or MIG slice, the fullest GPU).

CPU-only jobs prefer nodes with the least idle GPU capacity, so they do not strand GPUs behind full CPUs.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options, normalize
from gpufleet.coordinator.scheduler.request import KIND_CPU, MILLI, Request


class BinPack:
    name: ClassVar[str] = "BinPack"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        st = cycle.state
        nodes = opts.node
        if req.kind == KIND_CPU:
            idle = st.n_free_milli[nodes].astype(np.float64)
            cpu_used = 1.0 - (st.n_free_cpu[nodes] - req.cpu_milli) / np.maximum(st.n_cpu[nodes], 1)
            return normalize(cpu_used - idle / MILLI)
        cap = np.maximum(st.n_usable[nodes], 1) * MILLI
        used_after = cap - st.n_free_milli[nodes] + req.gpus * req.milli_per_gpu
        raw = used_after / cap
        if len(opts) and int(opts.col[0]) >= 0:
            gpu_used = MILLI - st.g_free_milli[nodes, opts.col]
            raw = raw + 2.0 * gpu_used / MILLI
        return normalize(raw.astype(np.float64))
