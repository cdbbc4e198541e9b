"""End to end on one machine: a real coordinator (in-process, embedded store), the Autoscaler registered as a
leader-only subsystem, and the fake provider starting real simulated agents as local processes.

* A job that fits no node makes the autoscaler buy a node; the agent registers, the job runs and succeeds; the
  idle node is then cordoned, drained and terminated (its agent process ends).
* A spot interruption on a node running a job: the node is drained at once (the coordinator requeues the job),
  a replacement is launched before the node goes, and the job runs again on the replacement.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gpufleet.coordinator.autoscaler.config import NodePoolConfig, SpotMode
from gpufleet.coordinator.autoscaler.instance import InstanceStatus
from gpufleet.coordinator.autoscaler.service import Autoscaler
from gpufleet.coordinator.config import AgentsConfig, CoordinatorSettings, SchedulingConfig, ServerConfig
from gpufleet.coordinator.providers.fake import FakeProvider
from gpufleet.coordinator.server import CoordinatorServer
from gpufleet.coordinator.store import open_store
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import jobs_pb2_grpc
from gpufleet.proto.v1 import types_pb2 as pb

pytestmark = pytest.mark.slow


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Setup:
    server: CoordinatorServer
    cloud: FakeProvider
    scaler: Autoscaler
    jobs: jobs_pb2_grpc.JobServiceStub

    async def submit(self, spec: pb.JobSpec, request_id: str) -> str:
        out: list[str] = []

        async def submitted() -> bool:
            try:
                resp = await self.jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec, request_id=request_id), timeout=5)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                    return False  # no leader yet
                raise
            out.append(resp.job.id)
            return True

        await _until(submitted, 30, "the coordinator to accept a job")
        return out[0]

    async def job(self, job_id: str) -> pb.Job:
        return await self.jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unwrap(provider: object) -> FakeProvider:
    """The FakeProvider under the registry's metering/retry decorators."""
    while not isinstance(provider, FakeProvider):
        inner = getattr(provider, "inner", None)
        assert inner is not None, f"{type(provider).__name__} wraps no provider, and no FakeProvider was found"
        provider = inner
    return provider


@asynccontextmanager
async def running(tmp_path: Path, pool: NodePoolConfig) -> AsyncIterator[Setup]:
    # wired exactly as an operator configures it: [autoscaler] pools and [providers.fake] in the coordinator's
    # settings, built by CoordinatorServer (autoscaling.attach_autoscaler), not by hand
    address = f"127.0.0.1:{_free_port()}"
    settings = CoordinatorSettings(
        state_dir=tmp_path / "coord",
        server=ServerConfig(listen=address),
        scheduling=SchedulingConfig(tick_s=0.5),
        agents=AgentsConfig(status_interval_ms=200, resync_interval_s=0.5),
        autoscaler={
            "pools": [pool.model_dump(mode="json")],
            "interval_s": 0.5,
            "pending_grace_s": 0,
            "boot_timeout_s": 60,
            "new_node_grace_s": 30,
        },
        providers={"fake": {"coordinator": address, "state_root": str(tmp_path / "agents")}},
    )
    store = open_store("embedded", tmp_path / "coord")
    server = CoordinatorServer(settings, store)
    scaler = server.autoscaler
    assert scaler is not None, "the [autoscaler] section did not build an autoscaler"
    cloud = _unwrap(scaler.reconciler.providers.get("fake"))
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(stop))
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Setup(server, cloud, scaler, jobs_pb2_grpc.JobServiceStub(channel))
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(serving, 30)
        await cloud.close()


def _spec(command: list[str], *, preemptible: bool = False) -> pb.JobSpec:
    spec = pb.JobSpec(name="e2e", team="ml", nodes=1, command=command, preemptible=preemptible)
    spec.resources.gpu_milli = 1000
    spec.resources.gpu_models.append("L4")
    return spec


async def test_pending_job_buys_a_node_runs_and_the_idle_node_goes_away(tmp_path: Path) -> None:
    pool = NodePoolConfig(
        name="l4",
        provider="fake",
        regions=["local-a"],
        instance_types=["sim-l4x1"],
        spot=SpotMode.NEVER,
        idle_timeout_s=2,
    )
    async with running(tmp_path, pool) as s:
        job_id = await s.submit(_spec([sys.executable, "-c", "print('hi')"]), "e2e-1")

        async def succeeded() -> bool:
            return (await s.job(job_id)).state == pb.JOB_STATE_SUCCEEDED

        await _until(succeeded, 60, "the job to succeed on an autoscaled node")
        (inst,) = s.scaler.instances()
        assert inst.instance_type == "sim-l4x1"

        async def removed() -> bool:
            return s.scaler.instances()[0].status == InstanceStatus.TERMINATED

        await _until(removed, 60, "the idle node to be drained and terminated")
        assert not [i for i in await s.cloud.list_instances() if i.state.value != "terminated"]
        history = [h.dst for h in s.scaler.instances()[0].history]
        assert history[-3:] == [InstanceStatus.DRAINING, InstanceStatus.TERMINATING, InstanceStatus.TERMINATED]


async def test_spot_interruption_requeues_the_job_onto_a_replacement(tmp_path: Path) -> None:
    pool = NodePoolConfig(
        name="l4",
        provider="fake",
        regions=["local-a"],
        instance_types=["sim-l4x1"],
        spot=SpotMode.PREFER,
        idle_timeout_s=600,
    )
    async with running(tmp_path, pool) as s:
        job_id = await s.submit(
            _spec([sys.executable, "-c", "import time; time.sleep(120)"], preemptible=True), "e2e-2"
        )

        async def running_job() -> bool:
            return (await s.job(job_id)).state == pb.JOB_STATE_RUNNING

        await _until(running_job, 60, "the job to run on a spot node")
        (spot,) = s.scaler.instances()
        assert spot.spot and (await s.job(job_id)).assignments[0].node == spot.node

        deadline = s.server.coordinator.clock.now_ms() + 120_000
        await s.scaler.handle_interruption(
            spot.node, apb.SpotInterruption(provider="fake", kind="terminate", deadline_ms=deadline)
        )
        replacement = [i for i in s.scaler.instances() if i.id != spot.id]
        assert len(replacement) == 1 and not replacement[0].spot  # launched before the spot node goes
        s.cloud.interrupt(spot.cloud_id)  # the cloud takes the machine

        async def moved() -> bool:
            job = await s.job(job_id)
            return job.state == pb.JOB_STATE_RUNNING and job.assignments[0].node == replacement[0].node

        await _until(moved, 60, "the job to run again on the replacement")
        assert (await s.job(job_id)).attempt >= 2
