"""Prometheus metrics of a coordinator replica (``[server] metrics_port``).

Gauges are refreshed inside the event loop from the leader's in-memory fleet view (never by the HTTP thread, so
no shared state is read across threads); a follower exports only that it is not the leader. Names are prefixed
``gpufleet_``; the agents export per-GPU and per-job metrics (agent/metrics.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from gpufleet.common import lifecycle as lc
from gpufleet.coordinator.app import Coordinator
from gpufleet.proto.v1 import types_pb2 as pb


class CoordinatorMetrics:
    def __init__(self, c: Coordinator, registry: CollectorRegistry | None = None) -> None:
        self.c = c
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.leader = Gauge("gpufleet_coordinator_leader", "1 on the replica that leads.", registry=r)
        self.jobs = Gauge("gpufleet_jobs", "Jobs by state (leader only).", ["state"], registry=r)
        self.nodes = Gauge("gpufleet_nodes", "Nodes by state (leader only).", ["state"], registry=r)
        self.capacity = Gauge("gpufleet_gpu_capacity_milli", "GPU capacity of ready nodes, milli-GPU.", registry=r)
        self.allocated = Gauge("gpufleet_gpu_allocated_milli", "GPU allocated to jobs, milli-GPU.", registry=r)

    def update(self) -> None:
        leading = self.c.elector.is_leader
        self.leader.set(1 if leading else 0)
        jobs: Counter[str] = Counter()
        nodes: Counter[str] = Counter()
        capacity = allocated = 0
        if leading:
            for j in self.c.view.jobs.values():
                jobs[lc.state_name(j.state)] += 1
                if j.state in lc.ACTIVE:  # as ListNodes counts it: the shares assigned to active jobs
                    allocated += sum(d.gpu_milli for a in j.assignments for d in a.devices)
            for n in self.c.view.nodes.values():
                nodes[pb.NodeState.Name(n.state).removeprefix("NODE_STATE_")] += 1
                if n.state == pb.NODE_STATE_READY:
                    capacity += n.capacity_gpu_milli
        for state in lc.TRANSITIONS:
            name = lc.state_name(state)
            self.jobs.labels(name).set(jobs.get(name, 0))
        for value in pb.NodeState.values():
            if value:
                name = pb.NodeState.Name(value).removeprefix("NODE_STATE_")
                self.nodes.labels(name).set(nodes.get(name, 0))
        self.capacity.set(capacity)
        self.allocated.set(allocated)

    async def run(self, interval_s: float = 5.0) -> None:
        while True:
            self.update()
            await asyncio.sleep(interval_s)

    def serve(self, port: int, host: str = "0.0.0.0") -> WSGIServer:
        """Serve ``/metrics`` in a daemon thread; returns the server (``server.server_port`` when port is 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
