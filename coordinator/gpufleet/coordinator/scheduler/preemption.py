"""Preemption: find the cheapest set of running jobs whose removal lets a job fit on one node.

Victims must be preemptible, past their ``min_runtime_s``, and either of lower priority, or borrowed work
(their team holds more than its guarantee) when the preemptor's team is still within its own guarantee
(reclaim; then equal priority is enough). Per node, victims are released in order (borrowed first, then
lowest priority, then least running time) until the job fits; the node whose victims lose the least running
time wins. Gang jobs are not placed by preemption (their members would have to be found on several nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gpufleet.coordinator.scheduler.framework import B, CycleState
from gpufleet.coordinator.scheduler.plugins.quota import request_milli
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.state import BoundJob
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
) -> list[Victim] | None:
    """Victims to release (already released in the state's undo log when returned), or None."""
    if req.nodes > 1:
        return None
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
    tried = sorted(per_node, key=lambda i: -sum(b.milli for _, _, b in per_node[i]))[:MAX_NODES_TRIED]
    best: tuple[tuple[int, int, int], list[Victim]] | None = None
    for i in tried:
        mask = np.zeros(st.n, dtype=np.bool_)
        mask[i] = True
        mark = st.mark()
        chosen: list[Victim] = []
        ok = False
        for _, v, _ in sorted(per_node[i], key=lambda t: t[0]):
            st.release(v.job_id)
            chosen.append(v)
            if fits_on(mask):
                ok = True
                break
        st.rollback(mark)
        if ok:
            key = (sum(v.lost_ms for v in chosen), len(chosen), i)
            if best is None or key < best[0]:
                best = (key, chosen)
    if best is None:
        return None
    for v in best[1]:
        st.release(v.job_id)
    return best[1]
