"""GpuFit filter: fractions and whole GPUs (model, health, free share and memory), as (n, G) masks.

A fraction needs one non-MIG GPU with ``milli`` and its memory free; whole GPUs need ``gpus`` idle GPUs on
one node. MIG slices are the Mig plugin's; MIG-enabled GPUs are never handed out as fractions or whole GPUs.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import B, Candidates, CycleState, NodeFit
from gpufleet.coordinator.scheduler.request import KIND_FRACTION, KIND_WHOLE, MILLI, Request
from gpufleet.coordinator.scheduler.state import ClusterState
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


def model_mask(st: ClusterState, models: tuple[str, ...]) -> B | None:
    """(n, G) mask of GPUs of an allowed model, or None when any model will do."""
    if not models:
        return None
    mask: B = st.models.lookup(models)[st.g_model[: st.n]]
    return mask


class GpuFit:
    name: ClassVar[str] = "GpuFit"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        if req.kind not in (KIND_FRACTION, KIND_WHOLE):
            return SKIP
        st = cycle.state
        n = st.n
        usable = st.g_open[:n] & cand.node[:, None]
        mm = model_mask(st, req.models)
        if mm is not None:
            usable &= mm
            if cand.narrow(usable.any(axis=1), f"lack {'|'.join(req.models)} GPUs") == 0:
                return Result(Status.UNSCHEDULABLE, f"no ready node has {'|'.join(req.models)} GPUs", self.name)
        free = st.g_free_milli[:n]
        total = st.g_total_mib[:n]
        if req.kind == KIND_FRACTION:
            need = (
                np.full(total.shape, req.mem_mib, dtype=np.int64) if req.mem_mib else total * req.milli_per_gpu // MILLI
            )
            fits = usable & (free >= req.milli_per_gpu) & (st.g_free_mib[:n] >= need)
            cand.gpu, cand.need_mib = fits, need
            if cand.narrow(fits.any(axis=1), f"have no GPU with {req.milli_per_gpu} milli free") == 0:
                best = int(np.where(usable, free, 0).max()) if usable.any() else 0
                cand.near_miss = f"the most free on one GPU is {best} milli"
                return Result(Status.UNSCHEDULABLE, "no GPU has the share free", self.name)
            return SUCCESS
        fits = usable & (free >= MILLI)
        if req.mem_mib:
            fits &= total >= req.mem_mib
        cand.gpu, cand.need_mib = fits, total
        count = fits.sum(axis=1)
        if cand.narrow(count >= req.gpus, f"have fewer than {req.gpus} idle GPUs") == 0:
            best = int(count.max()) if count.size else 0
            cand.near_miss = f"the best node has {best} free"
            return Result(Status.UNSCHEDULABLE, f"no node has {req.gpus} idle GPUs", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> NodeFit:
        if req.kind not in (KIND_FRACTION, KIND_WHOLE):
            return True
        st = cycle.state
        cols = [c for c, ok in enumerate(st.g_open[i].tolist()) if ok]
        if req.models:
            lut = st.models.lookup(req.models)
            model = st.g_model[i].tolist()
            cols = [c for c in cols if lut[model[c]]]
        free = st.g_free_milli[i].tolist()
        total = st.g_total_mib[i].tolist()
        if req.kind == KIND_FRACTION:
            milli, mem = req.milli_per_gpu, req.mem_mib
            free_mib = st.g_free_mib[i].tolist()
            cols = [c for c in cols if free[c] >= milli and free_mib[c] >= (mem or total[c] * milli // MILLI)]
            return cols or False
        cols = [c for c in cols if free[c] >= MILLI and (not req.mem_mib or total[c] >= req.mem_mib)]
        return len(cols) >= req.gpus
