"""Plan a MIG re-layout when no free slice of a profile exists.

Candidates are healthy MIG-enabled GPUs of a model offering the profile on nodes that pass the other filters.
Slices in use are never touched: the new layout keeps them, adds the requested profile at the first start the
placement rules allow, and keeps as many of the free slices as still fit. Cost = 1 (the operation) + free
slices destroyed; the cheapest wins, then the fullest GPU (packing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpufleet.common import gpu_models
from gpufleet.common.errors import InvalidInputError
from gpufleet.common.gpu_models import PlacedInstance
from gpufleet.coordinator.scheduler.framework import B
from gpufleet.coordinator.scheduler.plugins.mig import models_with_profile
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.state import ClusterState


@dataclass(frozen=True, slots=True)
class RelayoutChoice:
    node: int
    col: int
    profiles: list[str]
    cost: int
    starts: list[int]


def plan(state: ClusterState, req: Request, node_mask: B) -> RelayoutChoice | None:
    n = state.n
    models = models_with_profile(req.mig_profile, req.models)
    ids = [state.models.ids[m] for m in models if m in state.models.ids]
    gpus = state.g_valid[:n] & state.g_mig[:n] & state.g_healthy[:n] & ~state.g_blocked[:n]
    gpus &= np.isin(state.g_model[:n], ids) & node_mask[:, None]
    best: tuple[tuple[int, int, int, int], RelayoutChoice] | None = None
    profile = req.mig_profile
    g = state.G
    for flat in np.flatnonzero(gpus).tolist():
        i, col = divmod(flat, g)
        layout_id, layout = state.mig_layout(i, col)
        memo_key = (layout_id, profile)
        if memo_key in _LAYOUTS:
            got = _LAYOUTS[memo_key]
        else:
            got = _layout(layout[0], layout[1], profile)
            if len(_LAYOUTS) >= _LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[memo_key] = got
        if got is None:
            continue
        profiles, cost, starts, n_used = got
        key = (cost, -n_used, i, col)
        if best is None or key < best[0]:
            best = (key, RelayoutChoice(i, col, list(profiles), cost, list(starts)))
    return best[1] if best else None


# (layout id from ClusterState.mig_layout, profile) -> the GPU's re-layout (a pure function; bounded memo)
_Layout = tuple[tuple[str, ...], int, tuple[int, ...], int] | None
_LAYOUTS: dict[tuple[int, str], _Layout] = {}
_LAYOUTS_MAX = 16_384


def _layout(model_name: str, slots: tuple[tuple[str, int, bool], ...], profile: str) -> _Layout:
    """(profiles, cost, starts, slices in use) of the cheapest new layout of one GPU (its slots as (profile,
    start, in use)), or None."""
    model = gpu_models.MODELS.get(model_name)
    if model is None:
        return None
    used: list[PlacedInstance] = []
    free: list[PlacedInstance] = []
    for slot_profile, slot_start, in_use in slots:
        try:
            inst = PlacedInstance(model.profile(slot_profile), slot_start)
        except InvalidInputError:
            continue
        (used if in_use else free).append(inst)
    start = gpu_models.find_start(model, used, profile)
    if start is None:
        return None
    layout = [*used, PlacedInstance(model.profile(profile), start)]
    kept = 0
    for f in sorted(free, key=lambda p: p.start):
        if gpu_models.compatible(layout, f):
            layout.append(f)
            kept += 1
    cost = 1 + len(free) - kept
    ordered = sorted(layout, key=lambda p: p.start)
    return tuple(p.profile.name for p in ordered), cost, tuple(p.start for p in ordered), len(used)
