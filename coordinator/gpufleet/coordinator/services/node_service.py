"""NodeService: reads from the store (any replica, plus live telemetry on the leader); writes on the leader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.gpu_models import get_model, plan_layout
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.services.errors import streaming, unary
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.store.base import CompactedError
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import nodes_pb2 as npb
from gpufleet.proto.v1 import nodes_pb2_grpc
from gpufleet.proto.v1 import types_pb2 as pb

Ctx = grpc.aio.ServicerContext[Any, Any]


class NodeServicer(nodes_pb2_grpc.NodeServiceServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def _live(self, node: pb.Node) -> pb.Node:
        """Add the leader's memory-only fields (heartbeat, telemetry) when this replica has them."""
        mem = self.c.view.nodes.get(node.inventory.name) if self.c.is_leader else None
        if mem is not None:
            node.last_heartbeat_ms = self.c.sessions.last_seen_ms.get(node.inventory.name, 0)
            del node.telemetry[:]
            node.telemetry.extend(mem.telemetry)
        return node

    @unary
    async def ListNodes(self, request: npb.ListNodesRequest, _context: Ctx) -> npb.ListNodesResponse:
        states = set(request.states)
        nodes = [
            self._live(n)
            for n in await self.c.node_reader.list()
            if (not states or n.state in states)
            and (not request.provider or n.inventory.provider == request.provider)
            and (not request.region or n.inventory.region == request.region)
        ]
        return npb.ListNodesResponse(nodes=nodes)

    @unary
    async def GetNode(self, request: npb.GetNodeRequest, _context: Ctx) -> pb.Node:
        return self._live(await self.c.node_reader.get(request.name))

    @unary
    async def CordonNode(self, request: npb.CordonNodeRequest, _context: Ctx) -> pb.Node:
        await self.c.require_leader()
        return await self.c.nodes.cordon(request.name, request.reason)

    @unary
    async def UncordonNode(self, request: npb.UncordonNodeRequest, _context: Ctx) -> pb.Node:
        await self.c.require_leader()
        return await self.c.nodes.uncordon(request.name)

    @unary
    async def DrainNode(self, request: npb.DrainNodeRequest, _context: Ctx) -> pb.Node:
        await self.c.require_leader()
        return await self.c.nodes.drain(request.name, int(request.deadline_s), request.reason)

    @streaming
    async def WatchNodes(self, request: npb.WatchNodesRequest, context: Ctx) -> AsyncIterator[pb.NodeEvent]:
        if request.since_revision < 0:
            raise InvalidInputError(Problem("since_revision", "must be >= 0"))
        start = request.since_revision + 1
        if not request.since_revision:
            kvs, rev = await self.c.store.range(keys.NODES)
            for kv in kvs:
                yield pb.NodeEvent(type=pb.NodeEvent.TYPE_ADDED, node=keys.node_from_kv(kv), revision=kv.mod_revision)
            start = rev + 1
        try:
            async for ev in self.c.store.watch(keys.NODES, start):
                if ev.type == "delete":
                    node = pb.Node(revision=ev.revision)
                    node.inventory.name = ev.kv.key.removeprefix(keys.NODES)
                    yield pb.NodeEvent(type=pb.NodeEvent.TYPE_DELETED, node=node, revision=ev.revision)
                    continue
                kind = pb.NodeEvent.TYPE_ADDED if ev.kv.version == 1 else pb.NodeEvent.TYPE_MODIFIED
                yield pb.NodeEvent(type=kind, node=keys.node_from_kv(ev.kv), revision=ev.revision)
        except CompactedError as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"{exc}; watch again with since_revision=0")

    @unary
    async def SetMigLayout(self, request: npb.SetMigLayoutRequest, _context: Ctx) -> npb.SetMigLayoutResponse:
        await self.c.require_leader()
        node = self.c.view.node(request.node)
        gpu = next((g for g in node.inventory.gpus if g.index == request.gpu_index), None)
        if gpu is None:
            have = ", ".join(str(g.index) for g in node.inventory.gpus) or "none"
            raise InvalidInputError(
                Problem("gpu_index", f"node {request.node} has no GPU {request.gpu_index} ({have})")
            )
        model = get_model(gpu.model)
        plan_layout(model, list(request.profiles))  # raises InvalidInputError naming the problem
        if gpu.mig_mode != pb.MIG_MODE_ENABLED:  # MIG mode first (the agent refuses a layout otherwise)
            enable = apb.Command(set_mig_mode=apb.SetMigMode(gpu_index=request.gpu_index, enabled=True))
            result = await self.c.sessions.command(request.node, enable)
            if not result.ok:
                return npb.SetMigLayoutResponse(command_id=result.command_id, accepted=False, message=result.message)
            if result.gpus:
                await self.c.nodes.update_gpus(request.node, list(result.gpus))
        cmd = apb.Command(apply_mig_layout=apb.ApplyMigLayout(gpu_index=request.gpu_index, profiles=request.profiles))
        result = await self.c.sessions.command(request.node, cmd)
        if result.ok and result.gpus:
            await self.c.nodes.update_gpus(request.node, list(result.gpus))
        return npb.SetMigLayoutResponse(command_id=result.command_id, accepted=result.ok, message=result.message)
