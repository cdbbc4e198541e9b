"""Where instance records live: ``StoreInstanceStorage`` (the cluster store, ``/gpufleet/instances/<id>``, fenced
leader writes) so a new leader knows what the old one launched, and ``MemoryInstanceStorage`` for tests and
single-process runs without a store.

A record is written BEFORE the cloud call it describes (REQUESTED with its id = the launch token), so a leader
that dies mid-launch leaves a record the next leader re-drives with the same token: no duplicate machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gpufleet.coordinator.autoscaler.instance import Instance
from gpufleet.coordinator.store import ClusterStore, Delete, Put, TxnResult
from gpufleet.proto.v1 import cluster_pb2 as cpb

PREFIX = "/gpufleet/instances/"

#: a fenced write: LeaderElector.leader_txn (raises NotLeaderError once leadership is lost)
LeaderWrite = Callable[[Sequence[Put | Delete]], Awaitable[TxnResult]]


class InstanceStorage(Protocol):
    async def load(self) -> list[Instance]: ...

    async def save(self, instance: Instance) -> None: ...

    async def delete(self, instance_id: str) -> None: ...


class MemoryInstanceStorage:
    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}

    async def load(self) -> list[Instance]:
        return [Instance.from_proto(cpb.CloudInstance.FromString(v)) for v in self.records.values()]

    async def save(self, instance: Instance) -> None:
        self.records[instance.id] = instance.to_proto().SerializeToString()

    async def delete(self, instance_id: str) -> None:
        self.records.pop(instance_id, None)


class StoreInstanceStorage:
    """Records in the cluster store. With ``leader_write`` (``elector.leader_txn``) every write is fenced."""

    def __init__(
        self, store: ClusterStore, leader_write: LeaderWrite | None = None, now_ms: Callable[[], int] | None = None
    ) -> None:
        self.store = store
        self.leader_write = leader_write
        self.now_ms = now_ms

    async def load(self) -> list[Instance]:
        kvs, _rev = await self.store.range(PREFIX)
        now = self.now_ms() if self.now_ms else 0
        return [Instance.from_proto(cpb.CloudInstance.FromString(kv.value), now_ms=now) for kv in kvs]

    async def _write(self, op: Put | Delete) -> None:
        if self.leader_write is not None:
            await self.leader_write([op])
        elif isinstance(op, Put):
            await self.store.put(op.key, op.value)
        else:
            await self.store.delete(op.key)

    async def save(self, instance: Instance) -> None:
        await self._write(Put(PREFIX + instance.id, instance.to_proto().SerializeToString()))

    async def delete(self, instance_id: str) -> None:
        await self._write(Delete(PREFIX + instance_id))
