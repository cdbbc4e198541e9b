"""Mig filter: a free MIG slice of the requested profile on a healthy MIG-enabled GPU of an allowed model.

When no free slice exists the scheduler asks ``scheduler/mig_relayout.py`` whether an idle-enough
MIG-enabled GPU could be re-laid-out (never touching slices in use).
"""

from __future__ import annotations

import functools
from typing import ClassVar

from gpufleet.common import gpu_models
from gpufleet.coordinator.scheduler.framework import Candidates, CycleState, NodeFit
from gpufleet.coordinator.scheduler.plugins.gpu_fit import model_mask
from gpufleet.coordinator.scheduler.request import KIND_MIG, Request
from gpufleet.coordinator.scheduler.types import SKIP, SUCCESS, Result, Status


@functools.lru_cache(maxsize=1024)
def models_with_profile(profile: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        m.name
        for m in gpu_models.MODELS.values()
        if (not allowed or m.name in allowed) and any(p.name == profile for p in m.mig_profiles)
    )


class Mig:
    name: ClassVar[str] = "Mig"

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result:
        if req.kind != KIND_MIG:
            return SKIP
        st = cycle.state
        n = st.n
        models = models_with_profile(req.mig_profile, req.models)
        if not models:
            return Result(
                Status.UNRESOLVABLE,
                f"no GPU model offers MIG profile {req.mig_profile!r}"
                + (f" among {'|'.join(req.models)}" if req.models else ""),
                self.name,
            )
        key = ("Mig", req.mig_profile, req.models)
        static = cycle.memo.get(key)
        if static is None or len(static) != n:
            mm = model_mask(st, models)
            assert mm is not None
            static = cycle.memo[key] = st.g_mig_ok[:n] & mm
        mig = static & cand.node[:, None]
        if cand.narrow(mig.any(axis=1), f"lack MIG-enabled {'|'.join(models)} GPUs") == 0:
            return Result(Status.UNSCHEDULABLE, "no ready node has a MIG-enabled GPU for the profile", self.name)
        free = st.mig_free_array(req.mig_profile)[:n]
        fits = mig & (free > 0)
        cand.gpu = fits
        if cand.narrow(fits.any(axis=1), f"have no free {req.mig_profile} slice") == 0:
            return Result(Status.UNSCHEDULABLE, f"no free {req.mig_profile} slice", self.name)
        return SUCCESS

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> NodeFit:
        if req.kind != KIND_MIG:
            return True
        st = cycle.state
        models = models_with_profile(req.mig_profile, req.models)
        if not models:
            return False
        lut = st.models.lookup(models)
        model = st.g_model[i].tolist()
        free = st.mig_free_array(req.mig_profile)[i].tolist()
        cols = [c for c, ok in enumerate(st.g_mig_ok[i].tolist()) if ok and lut[model[c]] and free[c] > 0]
        return cols or False
