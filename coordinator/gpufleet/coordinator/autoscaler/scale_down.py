"""Scale-down: which registered nodes to remove now. Pure: no I/O, no clock (``now_ms`` is passed in).

A node is a candidate when

* **idle**: it has held no job (jobs present on it, not requests) for its pool's ``idle_timeout_s``; or
* **consolidation**: every job on it is preemptible, the node is at most half used, and the real scheduler
  places all of its jobs on the other nodes (the candidate and the others being removed left out) - then the
  move saves the node's whole price. At most one such node per pass, so moves do not cascade.

Never: a node pending jobs could use (the reconciler protects it), a node running non-preemptible work (consolidation), a node that is cordoned for another reason, a pool
that would go below ``min_nodes``, or more nodes of a pool in DRAINING/TERMINATING than its
``disruption_budget``. The most expensive candidates go first. The reconciler then cordons, drains and
terminates them, in that order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpufleet.coordinator.autoscaler.config import AutoscalerConfig
from gpufleet.coordinator.autoscaler.instance import COUNTED, Instance, InstanceStatus
from gpufleet.coordinator.scheduler import ClusterState, Scheduler
from gpufleet.proto.v1 import types_pb2 as pb

IDLE = "idle"
CONSOLIDATE = "consolidate"


@dataclass(frozen=True, slots=True)
class Removal:
    instance: Instance
    why: str  # IDLE or CONSOLIDATE
    message: str


def jobs_on(node: pb.Node, running: Sequence[pb.Job]) -> set[str]:
    """Jobs present on the node: what the node reports plus what the coordinator placed there."""
    ids = set(node.job_ids)
    name = node.inventory.name
    for j in running:
        if any(a.node == name for a in j.assignments):
            ids.add(j.id)
    return ids


def choose_removals(
    config: AutoscalerConfig,
    instances: Sequence[Instance],
    nodes: Mapping[str, pb.Node],
    running: Sequence[pb.Job],
    idle_since_ms: Mapping[str, int],
    now_ms: int,
    scheduler: Scheduler | None = None,
    protect: frozenset[str] = frozenset(),
) -> list[Removal]:
    """Removals for this pass, in order. ``protect``: node names not to remove (e.g. pending work could use them)."""
    counted: dict[str, int] = defaultdict(int)
    disrupting: dict[str, int] = defaultdict(int)
    for inst in instances:
        if inst.status in COUNTED:
            counted[inst.pool] += 1
        if inst.status in (InstanceStatus.DRAINING, InstanceStatus.TERMINATING) and not inst.replaced:
            disrupting[inst.pool] += 1
    pools = {p.name: p for p in config.pools}
    jobs_by_id = {j.id: j for j in running}

    idle: list[Removal] = []
    busy: list[tuple[Instance, pb.Node, set[str]]] = []
    for inst in instances:
        pool = pools.get(inst.pool)
        node = nodes.get(inst.node)
        if pool is None or node is None or inst.status != InstanceStatus.REGISTERED or node.cordoned:
            continue
        if inst.node in protect:
            continue
        present = jobs_on(node, running)
        if not present:
            since = idle_since_ms.get(inst.node, now_ms)
            idle_s = (now_ms - since) // 1000
            if idle_s >= pool.idle_timeout_s:
                idle.append(Removal(inst, IDLE, f"no job for {idle_s}s (idle timeout {pool.idle_timeout_s}s)"))
        else:
            busy.append((inst, node, present))

    out: list[Removal] = []

    def admit(r: Removal) -> bool:
        pool = pools[r.instance.pool]
        if counted[pool.name] - 1 < pool.min_nodes or disrupting[pool.name] + 1 > pool.disruption_budget:
            return False
        counted[pool.name] -= 1
        disrupting[pool.name] += 1
        out.append(r)
        return True

    for r in sorted(idle, key=lambda r: -r.instance.price_micros):
        admit(r)

    removing = {r.instance.node for r in out}
    for inst, node, present in sorted(busy, key=lambda b: -b[0].price_micros):
        jobs = [jobs_by_id[j] for j in present if j in jobs_by_id]
        if len(jobs) != len(present) or not all(j.spec.preemptible for j in jobs):
            continue  # unknown or non-preemptible work: never moved
        if node.capacity_gpu_milli and node.allocated_gpu_milli * 2 > node.capacity_gpu_milli:
            continue  # well used: not worth a move
        movable = _movable(jobs, nodes, running, removing | {inst.node}, now_ms, scheduler)
        if movable and admit(Removal(inst, CONSOLIDATE, f"its {len(jobs)} job(s) fit on other nodes")):
            break
    return out


def _movable(
    jobs: Sequence[pb.Job],
    nodes: Mapping[str, pb.Node],
    running: Sequence[pb.Job],
    leaving: set[str],
    now_ms: int,
    scheduler: Scheduler | None,
) -> bool:
    """Whether the real scheduler places all ``jobs`` on the nodes that stay."""
    state = ClusterState()
    for n, node in nodes.items():
        if n not in leaving and not node.cordoned and node.state == pb.NODE_STATE_READY:
            state.upsert_node(node)
    moving = {j.id for j in jobs}
    for j in running:
        if j.id not in moving and j.assignments and all(a.node not in leaving for a in j.assignments):
            state.bind(j)
    copies = []
    for j in jobs:
        c = pb.Job()
        c.CopyFrom(j)
        del c.assignments[:]
        c.state = pb.JOB_STATE_PENDING
        copies.append(c)
    plan = (scheduler or Scheduler()).schedule(state, copies, now_ms)
    return not plan.unplaced and not plan.preemptions and len(plan.placements) == len(copies)
