"""The leader's authoritative in-memory view of jobs and nodes, and the one way the leader writes them.

Only the leader writes jobs and nodes, and every write is a fenced ``leader_txn`` conditioned on the mod revision
the view holds for each touched key. So after a successful commit the view is exact (it holds what was written,
at the txn's revision), and a commit that lost a race (``False``) means the view was stale for those keys: they
are re-read from the store and the caller re-plans. Listeners (the scheduling loop's ClusterState, the agent
session pusher) hear about every change right after it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from gpufleet.common.errors import NotFoundError, StoreError
from gpufleet.common.lifecycle import ACTIVE
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.store.base import ClusterStore, Compare, Delete, Put, TxnResult
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class Fencer(Protocol):
    """What the view needs from the leader elector (``gpufleet.coordinator.leadership.LeaderElector``)."""

    async def leader_txn(self, success: Sequence[Put | Delete], compares: Sequence[Compare] = ()) -> TxnResult: ...


class FleetListener(Protocol):
    def job_changed(self, old: pb.Job | None, new: pb.Job) -> None: ...

    def node_changed(self, old: pb.Node | None, new: pb.Node) -> None: ...


def job_nodes(job: pb.Job) -> set[str]:
    """Nodes where ``job`` must run now (empty unless it is SCHEDULED or RUNNING)."""
    if job.state not in ACTIVE:
        return set()
    return {a.node for a in job.assignments}


def copy_job(job: pb.Job) -> pb.Job:
    out = pb.Job()
    out.CopyFrom(job)
    return out


def copy_node(node: pb.Node) -> pb.Node:
    out = pb.Node()
    out.CopyFrom(node)
    return out


class FleetView:
    """Jobs, nodes and the request-id index as the leader knows them. Load on winning, clear on losing."""

    def __init__(self, store: ClusterStore, fencer: Fencer) -> None:
        self.store = store
        self.fencer = fencer
        self.jobs: dict[str, pb.Job] = {}
        self.nodes: dict[str, pb.Node] = {}
        self.requests: dict[str, str] = {}
        self.on_node: dict[str, set[str]] = {}  # node -> ids of active jobs assigned there
        self.listeners: list[FleetListener] = []
        self.loaded = False

    # ------------------------------------------------------------------ loading

    async def load(self) -> int:
        self.clear()
        job_kvs, rev = await self.store.range(keys.JOBS)
        node_kvs, _ = await self.store.range(keys.NODES)
        for kv in node_kvs:
            node = keys.node_from_kv(kv)
            self._set_node(node)
        for kv in job_kvs:
            job = keys.job_from_kv(kv)
            self._set_job(job)
        self.loaded = True
        log.info("fleet view loaded: %d jobs, %d nodes at revision %d", len(self.jobs), len(self.nodes), rev)
        return rev

    def clear(self) -> None:
        self.jobs.clear()
        self.nodes.clear()
        self.requests.clear()
        self.on_node.clear()
        self.loaded = False

    async def reload_job(self, job_id: str) -> pb.Job | None:
        kv = await self.store.get(keys.job_key(job_id))
        if kv is None:
            return None
        job = keys.job_from_kv(kv)
        self._apply_job(job)
        return job

    async def reload_node(self, name: str) -> pb.Node | None:
        kv = await self.store.get(keys.node_key(name))
        if kv is None:
            return None
        node = keys.node_from_kv(kv)
        self._apply_node(node)
        return node

    # ------------------------------------------------------------------ reads

    def job(self, job_id: str) -> pb.Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return job

    def node(self, name: str) -> pb.Node:
        node = self.nodes.get(name)
        if node is None:
            raise NotFoundError(f"node {name!r} not found; list nodes with `gpufleet node list`")
        return node

    def jobs_on(self, node: str) -> list[pb.Job]:
        return [self.jobs[j] for j in sorted(self.on_node.get(node, ())) if j in self.jobs]

    def jobs_in(self, *states: int) -> list[pb.Job]:
        return [j for j in self.jobs.values() if j.state in states]

    # ------------------------------------------------------------------ writes

    async def commit(
        self,
        jobs: Sequence[pb.Job] = (),
        nodes: Sequence[pb.Node] = (),
        *,
        puts: Sequence[Put] = (),
        compares: Sequence[Compare] = (),
    ) -> bool:
        """Write ``jobs``/``nodes`` (each conditioned on its ``revision``: 0 = must not exist yet) in one fenced txn.

        Returns False when a condition failed (the touched keys are re-read; re-plan). Raises NotLeaderError when
        this replica is no longer the leader, StoreError when the store failed (touched keys are re-read when
        possible, since the write may or may not have happened).
        """
        conds = list(compares)
        ops: list[Put | Delete] = list(puts)
        for job in jobs:
            conds.append(Compare(keys.job_key(job.id), "mod", "==", job.revision))
            ops.append(Put(keys.job_key(job.id), keys.encode_job(job)))
        for node in nodes:
            name = node.inventory.name
            conds.append(Compare(keys.node_key(name), "mod", "==", node.revision))
            ops.append(Put(keys.node_key(name), keys.encode_node(node)))
        try:
            result = await self.fencer.leader_txn(ops, conds)
        except StoreError:
            await self._resync(jobs, nodes)
            raise
        if not result.succeeded:
            await self._resync(jobs, nodes)
            return False
        for job in jobs:
            job.revision = result.revision
            self._apply_job(copy_job(job))
        for node in nodes:
            node.revision = result.revision
            self._apply_node(copy_node(node))
        return True

    async def update_job(self, job_id: str, mutate: Callable[[pb.Job], bool], attempts: int = 8) -> pb.Job:
        """Read-modify-write one job: ``mutate`` edits a copy and says whether it changed anything."""
        for _ in range(attempts):
            current = self.jobs.get(job_id)
            if current is None:
                current = await self.reload_job(job_id)
                if current is None:
                    raise NotFoundError(f"job {job_id!r} not found")
            job = copy_job(current)
            if not mutate(job):
                return current
            if await self.commit(jobs=[job]):
                return job
        raise StoreError(f"job {job_id}: gave up after {attempts} conflicting writes")

    async def update_node(self, name: str, mutate: Callable[[pb.Node], bool], attempts: int = 8) -> pb.Node:
        for _ in range(attempts):
            current = self.nodes.get(name)
            if current is None:
                raise NotFoundError(f"node {name!r} not found; list nodes with `gpufleet node list`")
            node = copy_node(current)
            if not mutate(node):
                return current
            if await self.commit(nodes=[node]):
                return node
        raise StoreError(f"node {name}: gave up after {attempts} conflicting writes")

    def forget_jobs(self, job_ids: Sequence[str]) -> None:
        """Drop finished jobs the leader has just removed from the store (``state/retention.py``). Nothing listens
        for them: a finished job holds no capacity and has nothing left to run."""
        for job_id in job_ids:
            job = self.jobs.pop(job_id, None)
            if job is None:
                continue
            if job.request_id and self.requests.get(job.request_id) == job_id:
                del self.requests[job.request_id]
            for n in job_nodes(job):
                self.on_node.get(n, set()).discard(job_id)

    # ------------------------------------------------------------------ internals

    async def _resync(self, jobs: Sequence[pb.Job], nodes: Sequence[pb.Node]) -> None:
        try:
            for job in jobs:
                await self.reload_job(job.id)
            for node in nodes:
                await self.reload_node(node.inventory.name)
        except StoreError as exc:
            log.warning("could not re-read records after a failed write: %s", exc)

    def _set_job(self, job: pb.Job) -> pb.Job | None:
        old = self.jobs.get(job.id)
        if old is not None:
            for n in job_nodes(old):
                self.on_node.get(n, set()).discard(job.id)
        self.jobs[job.id] = job
        if job.request_id:
            self.requests[job.request_id] = job.id
        for n in job_nodes(job):
            self.on_node.setdefault(n, set()).add(job.id)
        return old

    def _set_node(self, node: pb.Node) -> pb.Node | None:
        old = self.nodes.get(node.inventory.name)
        if old is not None:
            node.last_heartbeat_ms = node.last_heartbeat_ms or old.last_heartbeat_ms
            if not node.telemetry:
                node.telemetry.extend(old.telemetry)
        self.nodes[node.inventory.name] = node
        return old

    def _apply_job(self, job: pb.Job) -> None:
        current = self.jobs.get(job.id)
        if current is not None and current.revision > job.revision:
            return  # an older read raced with a newer write
        old = self._set_job(job)
        for listener in self.listeners:
            listener.job_changed(old, job)

    def _apply_node(self, node: pb.Node) -> None:
        current = self.nodes.get(node.inventory.name)
        if current is not None and current.revision > node.revision:
            return
        old = self._set_node(node)
        for listener in self.listeners:
            listener.node_changed(old, node)
