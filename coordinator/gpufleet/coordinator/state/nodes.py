"""Node records on the leader: registration, cordon/uncordon, drain, NOT_READY; and node reads from the store.

Node state machine (written to the store on every edge):

```
READY <-> NOT_READY      agent gone longer than liveness.node_timeout_s / agent registered again
READY -> DRAINING        DrainNode (also cordons); preemptible jobs requeued at once, the rest at the deadline
DRAINING -> DRAINED      no job left on the node
DRAINING|DRAINED -> READY  UncordonNode
```
"""

from __future__ import annotations

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import InvalidInputError, NotFoundError, Problem
from gpufleet.coordinator.state import job_rules, keys
from gpufleet.coordinator.state.fleet import FleetView, copy_job
from gpufleet.coordinator.state.stopping import StopTracker
from gpufleet.coordinator.store.base import ClusterStore
from gpufleet.proto.v1 import types_pb2 as pb

READY = pb.NODE_STATE_READY
NOT_READY = pb.NODE_STATE_NOT_READY
DRAINING = pb.NODE_STATE_DRAINING
DRAINED = pb.NODE_STATE_DRAINED

AGENT_GONE = "AGENT_GONE"


def node_state_name(state: int) -> str:
    return pb.NodeState.Name(state).removeprefix("NODE_STATE_")  # type: ignore[arg-type]


class NodeManager:
    def __init__(self, view: FleetView, clock: Clock, default_drain_s: int, stops: StopTracker | None = None) -> None:
        self.view = view
        self.clock = clock
        self.default_drain_s = default_drain_s
        self.stops = stops or StopTracker(clock, 0)

    async def register(self, inventory: pb.NodeInventory) -> pb.Node:
        """Upsert the node an agent registered (inventory, back to READY/DRAINING after NOT_READY)."""
        name = inventory.name
        if not name:
            raise InvalidInputError(Problem("register.inventory.name", "the agent must send its node name"))
        now = self.clock.now_ms()
        if name not in self.view.nodes:
            node = pb.Node(state=READY, registered_ms=now, capacity_gpu_milli=1000 * len(inventory.gpus))
            node.inventory.CopyFrom(inventory)
            if await self.view.commit(nodes=[node]):
                return node
            await self.view.reload_node(name)

        def mutate(node: pb.Node) -> bool:
            changed = False
            if node.inventory != inventory:
                node.inventory.CopyFrom(inventory)
                node.capacity_gpu_milli = 1000 * len(inventory.gpus)
                changed = True
            if node.state == NOT_READY:
                node.state = DRAINING if node.drain_deadline_ms else READY
                node.reason = "agent registered"
                node.registered_ms = now
                changed = True
            return changed

        return await self.view.update_node(name, mutate)

    async def update_gpus(self, name: str, gpus: list[pb.Gpu]) -> None:
        def mutate(node: pb.Node) -> bool:
            if list(node.inventory.gpus) == gpus:
                return False
            del node.inventory.gpus[:]
            node.inventory.gpus.extend(gpus)
            return True

        await self.view.update_node(name, mutate)

    async def cordon(self, name: str, reason: str) -> pb.Node:
        def mutate(node: pb.Node) -> bool:
            if node.cordoned:
                return False
            node.cordoned = True
            node.reason = reason or "cordoned"
            return True

        return await self.view.update_node(self._known(name), mutate)

    async def uncordon(self, name: str) -> pb.Node:
        def mutate(node: pb.Node) -> bool:
            if not node.cordoned and node.state not in (DRAINING, DRAINED):
                return False
            node.cordoned = False
            node.drain_deadline_ms = 0
            node.reason = "uncordoned"
            if node.state in (DRAINING, DRAINED):
                node.state = READY
            return True

        return await self.view.update_node(self._known(name), mutate)

    async def drain(self, name: str, deadline_s: int, reason: str) -> pb.Node:
        """Cordon and start draining; preemptible jobs are requeued now, the rest when the deadline passes."""
        if deadline_s < 0:
            raise InvalidInputError(Problem("deadline_s", "must be >= 0 (0 = the configured default)"))
        self._known(name)
        now = self.clock.now_ms()
        for _ in range(8):
            node = pb.Node()
            node.CopyFrom(self.view.node(name))
            node.cordoned = True
            node.reason = reason or "draining"
            if node.state != NOT_READY:
                node.state = DRAINING
            node.drain_deadline_ms = now + 1000 * (deadline_s or self.default_drain_s)
            moved = []
            held = []
            for job in self.view.jobs_on(name):
                if job.spec.preemptible:
                    held.append((job.id, job.attempt, {a.node for a in job.assignments}))
                    victim = copy_job(job)
                    job_rules.requeue_or_fail(
                        victim,
                        lc.PREEMPTED,
                        now_ms=now,
                        reason=job_rules.DRAINED,
                        message=f"node {name} drains" + (f": {reason}" if reason else ""),
                        failed=False,
                    )
                    moved.append(victim)
            if await self.view.commit(jobs=moved[:100], nodes=[node]):
                for job_id, attempt, nodes in held[:100]:
                    self.stops.hold(job_id, attempt, nodes)
                return node
        raise InvalidInputError(Problem("name", f"node {name} kept changing while draining; retry"))

    def _known(self, name: str) -> str:
        if not name:
            raise InvalidInputError(Problem("name", "a node name is required"))
        self.view.node(name)
        return name


class NodeReader:
    """Node reads from the store, with job ids and allocation derived from the job records."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store

    async def list(self) -> list[pb.Node]:
        node_kvs, _ = await self.store.range(keys.NODES)
        job_kvs, _ = await self.store.range(keys.JOBS)
        nodes = {n.inventory.name: n for n in (keys.node_from_kv(kv) for kv in node_kvs)}
        for kv in job_kvs:
            job = keys.job_from_kv(kv)
            if job.state not in lc.ACTIVE:
                continue
            for a in job.assignments:
                node = nodes.get(a.node)
                if node is None:
                    continue
                if job.id not in node.job_ids:
                    node.job_ids.append(job.id)
                node.allocated_gpu_milli += sum(d.gpu_milli for d in a.devices)
        return list(nodes.values())

    async def get(self, name: str) -> pb.Node:
        if not name:
            raise InvalidInputError(Problem("name", "a node name is required"))
        for node in await self.list():
            if node.inventory.name == name:
                return node
        raise NotFoundError(f"node {name!r} not found; list nodes with `gpufleet node list`")
