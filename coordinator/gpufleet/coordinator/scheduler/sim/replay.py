"""Replay a trace through the real scheduler with a simulated clock (no gRPC, no store).

Each job is offered to ``Scheduler.schedule`` once, at its arrival; placed jobs are bound like the coordinator
binds them and leave at ``submit_s + duration_s`` (or earlier when a higher-priority arrival preempts them;
preempted jobs are not requeued in this single-pass mode). The simulator plays the agent for MIG: a re-layout the plan
asks for is applied at once (slices in use kept) and the job is offered once more. Nothing waits.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gpufleet.coordinator.scheduler.scheduler import Scheduler
from gpufleet.coordinator.scheduler.sim.build import placed, set_mig_layout
from gpufleet.coordinator.scheduler.sim.trace import SimJob
from gpufleet.coordinator.scheduler.state import ClusterState
from gpufleet.coordinator.scheduler.types import MigRelayout, Plan
from gpufleet.proto.v1 import types_pb2 as pb

__all__ = ["ReplayResult", "apply_relayout", "cluster_fragmentation", "replay"]


@dataclass(slots=True)
class ReplayResult:
    placements: list[dict[str, object]] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time s, GPU allocation ratio)
    relayouts: int = 0
    preempted: list[dict[str, object]] = field(default_factory=list)  # {id, by, at_s, reason}
    end_fragmentation: float = 0.0  # expected stranded share of free GPU capacity at the end (FGD measure)


def apply_relayout(state: ClusterState, r: MigRelayout) -> None:
    """Act as the agent: lay out ``r.profiles`` on the GPU, keeping slices in use (same profile and start)."""
    node = state.node(r.node)
    if node is None:
        return
    new = pb.Node()
    new.CopyFrom(node)
    for gpu in new.inventory.gpus:
        if gpu.index == r.gpu_index:
            i = state.index[r.node]
            col = state.gpu_index[i].index(r.gpu_index)
            used = {s.uuid for s in state.mig_slots[i][col] if s.used}
            keep = [m for m in gpu.mig_instances if m.uuid in used or m.job_id]
            set_mig_layout(gpu, r.profiles, r.node, keep=[*keep, *gpu.mig_instances], starts=r.starts)
    state.upsert_node(new)


def cluster_fragmentation(state: ClusterState) -> float:
    """Expected fragmented share of the free GPU capacity for the current request mix (0..1): FGD's node
    measure (free share the mix could not use there), summed over nodes, divided by the free capacity."""
    mix = state.mix.classes()
    nodes = np.flatnonzero(state.n_alive[: state.n])
    s = state.n_free_milli[nodes].astype(np.float64)
    free = float(s.sum())
    if not len(mix) or free <= 0:
        return 0.0
    cpu = state.n_free_cpu[nodes]
    whole = state.n_free_whole[nodes]
    sig = state.n_sigma[nodes][:, mix.column].astype(np.float64)
    k = mix.gpus[None, :]
    inf = (cpu[:, None] < mix.cpu[None, :]) | ((k > 0) & (whole[:, None] < k))
    frag = np.where(inf, s[:, None], sig) @ mix.weight
    return float(frag.sum()) / free


def replay(
    state: ClusterState,
    jobs: Sequence[SimJob],
    scheduler: Scheduler,
    sample_every: int = 50,
) -> ReplayResult:
    out = ReplayResult()
    capacity = max(1, state.capacity_milli())
    leaving: list[tuple[float, str]] = []
    for k, sj in enumerate(sorted(jobs, key=lambda j: (j.submit_s, j.id))):
        while leaving and leaving[0][0] <= sj.submit_s:
            _, jid = heapq.heappop(leaving)
            state.unbind(jid)
        now_ms = int(sj.submit_s * 1000)
        plan = scheduler.schedule(state, [sj.job], now_ms)
        if plan.mig_relayouts and not plan.placements:
            for r in plan.mig_relayouts:
                apply_relayout(state, r)
                out.relayouts += 1
            plan = scheduler.schedule(state, [sj.job], now_ms)
        _record(out, state, sj, plan, leaving)
        if k % sample_every == 0:
            out.samples.append((sj.submit_s, state.allocated_milli() / capacity))
    out.end_fragmentation = cluster_fragmentation(state)
    return out


def _record(out: ReplayResult, state: ClusterState, sj: SimJob, plan: Plan, leaving: list[tuple[float, str]]) -> None:
    for pre in plan.preemptions:  # the victim stops here (it stays in placements; meta lists the preemption)
        state.unbind(pre.job_id)
        out.preempted.append({"id": pre.job_id, "by": pre.for_job_id, "at_s": sj.submit_s, "reason": pre.reason})
    p = plan.placement(sj.id)
    if p is None:
        out.unplaced.append(sj.id)
        out.reasons[sj.id] = plan.unplaced.get(sj.id, "not placed")
        out.codes[plan.codes.get(sj.id, "UNSCHEDULABLE")] += 1
        return
    state.bind(placed(sj.job, p.assignments, int(sj.submit_s * 1000)))
    rank0 = p.assignments[0]
    rec: dict[str, object] = {
        "id": sj.id,
        "node": rank0.node,
        "gpu_indices": [int(d.gpu_index) for d in rank0.devices],
    }
    if len(p.assignments) > 1:
        rec["members"] = [{"node": a.node, "gpu_indices": [int(d.gpu_index) for d in a.devices]} for a in p.assignments]
    if any(d.mig_device_uuid for d in rank0.devices):
        rec["mig_device_uuid"] = rank0.devices[0].mig_device_uuid
    out.placements.append(rec)
    if sj.duration_s is not None:
        heapq.heappush(leaving, (sj.submit_s + sj.duration_s, sj.id))
