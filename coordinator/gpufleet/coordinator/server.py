"""Run one coordinator replica: the gRPC server (API + agent streams + health + reflection) and its elector.

Health: the overall service ("") and every gpufleet service report SERVING once the server listens; the store
being unreachable turns them NOT_SERVING until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gpufleet.common.errors import GpuFleetError
from gpufleet.common.systemd import sd_notify, watchdog_interval_s
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.autoscaling import attach_autoscaler
from gpufleet.coordinator.config import CoordinatorSettings
from gpufleet.coordinator.metrics import CoordinatorMetrics
from gpufleet.coordinator.services.agent_service import AgentServicer
from gpufleet.coordinator.services.cluster_service import ClusterServicer, CostServicer
from gpufleet.coordinator.services.job_service import JobServicer
from gpufleet.coordinator.services.node_service import NodeServicer
from gpufleet.coordinator.store.base import ClusterStore
from gpufleet.proto.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    nodes_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
    cluster_pb2.DESCRIPTOR.services_by_name["CostService"].full_name,
]
MAX_MESSAGE = 64 * 1024 * 1024
HEALTH_INTERVAL_S = 2.0


class CoordinatorServer:
    """Binds the port first (so ``--listen HOST:0`` knows its address), then builds and runs the coordinator."""

    def __init__(self, settings: CoordinatorSettings, store: ClusterStore, identity: str = "") -> None:
        self.settings = settings
        self.store = store
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.port = self.server.add_insecure_port(settings.server.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.server.listen}")
        host = settings.server.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):  # listening everywhere: others reach us by our host name
            host = socket.gethostname()
        self.address = settings.server.advertise or f"{host}:{self.port}"
        self.identity = identity or settings.id or f"coordinator-{self.port}"
        self.coordinator = Coordinator(settings, store, identity=self.identity, address=self.address)
        c = self.coordinator
        self.autoscaler = attach_autoscaler(c, settings)
        self.cluster = ClusterServicer(c)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(c), self.server)
        nodes_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(c), self.server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(c), self.server)
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(self.cluster, self.server)
        cluster_pb2_grpc.add_CostServiceServicer_to_server(CostServicer(c), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)

    async def _watch_store_health(self) -> None:
        last: bool | None = None
        while True:
            healthy, _, message = await self.store.status()
            if healthy != last:
                await self._set_health(healthy)
                if not healthy:
                    log.warning("store unhealthy: %s", message)
                last = healthy
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then resign leadership and stop within the grace period."""
        await self.server.start()
        await self._set_health(True)
        log.info("coordinator %s listening on %s (store %s)", self.identity, self.address, self.store.kind)
        elector_task = asyncio.create_task(self.coordinator.elector.run(), name="elector")
        health_task = asyncio.create_task(self._watch_store_health(), name="health")
        metrics_server = None
        metrics_task: asyncio.Task[None] | None = None
        if self.settings.server.metrics_port:
            metrics = CoordinatorMetrics(self.coordinator)
            metrics_server = metrics.serve(self.settings.server.metrics_port, self.settings.server.metrics_host)
            metrics_task = asyncio.create_task(metrics.run(), name="metrics")
            log.info("metrics on %s:%d", self.settings.server.metrics_host, metrics_server.server_port)
        stop_task = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({elector_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if elector_task in done and not stop_task.done():
                elector_task.result()  # raises what ended it
        finally:
            await self._set_health(False)
            with contextlib.suppress(GpuFleetError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.coordinator.elector.resign()
            tasks = [t for t in (elector_task, health_task, stop_task, metrics_task) if t is not None]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await self.coordinator.runtime.close()
            await self.server.stop(self.settings.server.shutdown_grace_s)
            await self.store.close()


async def _watchdog() -> None:
    interval = watchdog_interval_s()
    if not interval:
        return
    while True:  # pings only while the event loop runs
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def run_server(settings: CoordinatorSettings, store: ClusterStore) -> None:
    server = CoordinatorServer(settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"gpufleet coordinator {server.identity} listening on {server.address}", flush=True)
    sd_notify("READY=1")
    watchdog = asyncio.create_task(_watchdog())
    try:
        await server.serve(stop)
    finally:
        sd_notify("STOPPING=1")
        watchdog.cancel()
