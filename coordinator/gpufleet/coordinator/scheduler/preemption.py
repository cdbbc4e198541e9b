"""Preemption: find the cheapest set of running jobs whose removal lets a job fit.

Victims must be preemptible, past their ``min_runtime_s``, and either of lower priority, or borrowed work
(their team holds more than its guarantee) when the preemptor's team is still within its own guarantee
(reclaim; then equal priority is enough). Per node, victims are released in order (borrowed first, then
lowest priority, then least running time) until one member of the job fits; for a single-node job the node
whose victims lose the least running time wins. A gang needs ``nodes`` such nodes in one provider/region:
nodes where a member already fits cost nothing, and the region whose cheapest set of nodes loses the least
running time wins (a victim freeing several of them counts once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gpufleet.coordinator.scheduler.framework import B, CycleState
from gpufleet.coordinator.scheduler.plugins.quota import request_milli
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.state import BoundJob, ClusterState
from gpufleet.proto.v1 import types_pb2 as pb

MAX_NODES_TRIED = 32


@dataclass(frozen=True, slots=True)
class Victim:
    job_id: str
    reason: str
    lost_ms: int


def _eligible(
    cycle: CycleState, req: Request, running: Mapping[str, pb.Job], taken: set[str]
) -> dict[str, tuple[tuple[int, int, int], Victim]]:
    st, cfg, now = cycle.state, cycle.config, cycle.now_ms
    q = cfg.team_quota(req.team)
    can_reclaim = (
        q is not None
        and q.guaranteed_milli > 0
        and st.team_milli.get(req.team, 0) + request_milli(req) <= q.guaranteed_milli
    )
    out: dict[str, tuple[tuple[int, int, int], Victim]] = {}
    for job_id in st.preemptible:
        bound = st.jobs[job_id]
        if job_id in taken or job_id == req.job_id:
            continue
        job = running.get(job_id, bound.job)
        if not job.spec.preemptible:
            continue
        ran = now - job.started_ms if job.started_ms else 0
        if job.spec.min_runtime_s and ran < job.spec.min_runtime_s * 1000:
            continue
        prio = int(job.priority_value)
        borrowed = False
        if can_reclaim and prio <= req.priority and bound.team != req.team:
            vq = cfg.team_quota(bound.team)
            borrowed = st.team_milli.get(bound.team, 0) > (vq.guaranteed_milli if vq else 0)
        if borrowed:
            why = (
                f"reclaimed for team {req.team or '(none)'} (within its guaranteed share) by job {req.job_id}; "
                f"team {bound.team or '(none)'} was borrowing above its guarantee"
            )
        elif prio < req.priority:
            why = f"preempted by higher-priority job {req.job_id} (priority {req.priority} > {prio})"
        else:
            continue
        out[job_id] = ((0 if borrowed else 1, prio, ran), Victim(job_id, why, ran))
    return out


def find(
    cycle: CycleState,
    req: Request,
    running: Mapping[str, pb.Job],
    taken: set[str],
    fits_on: Callable[[B], bool],
    fits_now: B | None = None,
) -> list[Victim] | None:
    """Victims to release (already released in the state's undo log when returned), or None.

    ``fits_on(mask)``: whether one member fits on some node of ``mask``; ``fits_now``: the nodes where a member
    fits without preemption (gangs only)."""
    st = cycle.state
    eligible = _eligible(cycle, req, running, taken)
    if not eligible:
        return None
    per_node: dict[int, list[tuple[tuple[int, int, int], Victim, BoundJob]]] = {}
    for job_id, (key, v) in eligible.items():
        bound = st.jobs[job_id]
        for a in bound.allocs:
            i = st.index.get(a.node)
            if i is not None:
                per_node.setdefault(i, []).append((key, v, bound))
    free_now = set(np.flatnonzero(fits_now).tolist()) if fits_now is not None and req.nodes > 1 else set()
    candidates = [i for i in per_node if i not in free_now]
    tried = sorted(candidates, key=lambda i: -sum(b.milli for _, _, b in per_node[i]))[: MAX_NODES_TRIED * req.nodes]
    options: dict[int, list[Victim]] = {i: [] for i in free_now}
    for i in tried:
        chosen = _free_one_node(st, i, per_node[i], fits_on)
        if chosen is not None:
            options[i] = chosen
    best = _cheapest(st, req, options)
    if best is None:
        return None
    for v in best:
        st.release(v.job_id)
    return best


def _free_one_node(
    st: ClusterState,
    i: int,
    victims: list[tuple[tuple[int, int, int], Victim, BoundJob]],
    fits_on: Callable[[B], bool],
) -> list[Victim] | None:
    """The victims on node slot i, released in preference order, after which a member fits there."""
    mask = np.zeros(st.n, dtype=np.bool_)
    mask[i] = True
    mark = st.mark()
    chosen: list[Victim] = []
    try:
        for _, v, _ in sorted(victims, key=lambda t: t[0]):
            st.release(v.job_id)
            chosen.append(v)
            if fits_on(mask):
                return chosen
        return None
    finally:
        st.rollback(mark)


def _cost(victims: list[Victim]) -> tuple[int, int]:
    unique = {v.job_id: v for v in victims}
    return sum(v.lost_ms for v in unique.values()), len(unique)


def _cheapest(st: ClusterState, req: Request, options: dict[int, list[Victim]]) -> list[Victim] | None:
    """For a single-node job the node losing the least work; for a gang the cheapest ``nodes`` nodes of the
    region where they lose the least work together. None when nothing fits or nothing needs preempting."""
    best: tuple[tuple[int, int, int], list[Victim]] | None = None
    if req.nodes <= 1:
        for i, victims in options.items():
            if victims:
                key = (*_cost(victims), i)
                if best is None or key < best[0]:
                    best = (key, victims)
        return best[1] if best is not None else None
    by_region: dict[int, list[tuple[tuple[int, int], int]]] = {}
    for i, victims in options.items():
        by_region.setdefault(int(st.n_region[i]), []).append((_cost(victims), i))
    for region, nodes in by_region.items():
        if len(nodes) < req.nodes:
            continue
        picked = [i for _, i in sorted(nodes)[: req.nodes]]
        victims = list({v.job_id: v for i in picked for v in options[i]}.values())
        if not victims:
            continue  # fits without preemption: not preemption's case
        key = (*_cost(victims), region)
        if best is None or key < best[0]:
            best = (key, victims)
    return best[1] if best is not None else None
