"""ClusterService (leader, replicas, store health, counts) and CostService (reports, budgets)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc

from gpufleet.common import lifecycle as lc
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.services.errors import unary
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.state.nodes import node_state_name
from gpufleet.coordinator.store.base import Put
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import cluster_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def package_version() -> str:
    try:
        return version("gpufleet")
    except PackageNotFoundError:
        return "0+unknown"


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    @unary
    async def GetClusterStatus(self, _request: cpb.GetClusterStatusRequest, _context: Ctx) -> cpb.ClusterStatus:
        out = cpb.ClusterStatus(version=package_version(), serving_replica_id=self.c.identity)
        info = self.c.elector.leader
        if info is not None:
            out.leader_id, out.leader_address, out.leader_epoch = info.id, info.address, info.epoch
        healthy, rev, message = await self.c.store.status()
        out.store.CopyFrom(
            cpb.StoreStatus(
                kind=self.c.store.kind, endpoints=self.c.store.endpoints, healthy=healthy, message=message, revision=rev
            )
        )
        if not healthy:
            return out
        for rep in await self.c.elector.list_replicas():
            out.replicas.append(
                cpb.Replica(id=rep.id, address=rep.address, leader=rep.leader, last_seen_ms=rep.registered_ms)
            )
        for node in await self.c.node_reader.list():
            name = node_state_name(node.state)
            out.nodes_by_state[name] = out.nodes_by_state[name] + 1
            out.gpu_capacity_milli += node.capacity_gpu_milli
            out.gpu_allocated_milli += node.allocated_gpu_milli
        job_kvs, _ = await self.c.store.range(keys.JOBS)
        for kv in job_kvs:
            name = lc.state_name(keys.job_from_kv(kv).state)
            out.jobs_by_state[name] = out.jobs_by_state[name] + 1
        return out

    @unary
    async def ListInstances(self, _request: cpb.ListInstancesRequest, _context: Ctx) -> cpb.ListInstancesResponse:
        source = self.c.instances
        return cpb.ListInstancesResponse(instances=list(source()) if source is not None else [])


class CostServicer(cluster_pb2_grpc.CostServiceServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    @unary
    async def GetCostReport(self, request: cpb.GetCostReportRequest, _context: Ctx) -> cpb.CostReport:
        return await self.c.costs.report(request.start_ms, request.end_ms, request.group_by, request.team)

    @unary
    async def SetBudget(self, request: cpb.SetBudgetRequest, _context: Ctx) -> cpb.Budget:
        budget = request.budget
        await self.c.costs.set_budget(budget)
        await self.c.require_leader()
        stored = cpb.Budget(team=budget.team, limit_micros=budget.limit_micros, period_s=budget.period_s)
        await self.c.elector.leader_txn([Put(keys.budget_key(budget.team), stored.SerializeToString())])
        filled = await self.c.costs.budgets([stored])
        return filled[0]

    @unary
    async def ListBudgets(self, _request: cpb.ListBudgetsRequest, _context: Ctx) -> cpb.ListBudgetsResponse:
        return cpb.ListBudgetsResponse(budgets=await self.c.costs.budgets(await self.c.costs.stored_budgets()))
