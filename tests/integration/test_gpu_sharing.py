"""Three real processes share one simulated GPU; the one over its memory limit is stopped, the others run on.

The stop callback does what the agent daemon does (detach, SIGTERM the process group, SIGKILL after a
grace period), so this exercises GpuSharing.run() end to end: sampler, watchdog, time-slicer, stop path.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import is_alive, kill_group, processes


async def test_three_jobs_share_a_gpu_and_only_the_greedy_one_is_stopped(tmp_path: Path) -> None:
    backend = create_backend("simulate:A100-40GB:1", tmp_path / "state", node_name="node-a")
    stops: list[tuple[str, str, str]] = []
    pgids: dict[str, int] = {}
    gs: GpuSharing

    async def stop_job(job_id: str, reason: str, message: str) -> None:
        stops.append((job_id, reason, message))
        gs.detach(job_id)
        await kill_group(pgids[job_id], grace_s=2.0)

    config = SharingConfig(quantum_ms=50, busy_sample_interval_s=0.2, memory_grace_s=0.4)
    gs = GpuSharing(backend, tmp_path / "state", config, stop_job, registry=CollectorRegistry())
    uuid = gs.inventory()[0].uuid
    plan = {"small": (300, 4096, 3000), "medium": (300, 4096, 4000), "greedy": (400, 4096, 9000)}
    with processes() as procs:
        jobs = {}
        for job_id, (milli, limit, use) in plan.items():
            d = pb.DeviceAssignment(
                gpu_index=0, gpu_uuid=uuid, mode=pb.SHARING_MODE_SHARED, gpu_milli=milli, gpu_memory_mib=limit
            )
            env = gs.job_env(job_id, [d])
            assert env["CUDA_VISIBLE_DEVICES"] == uuid and env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] == "4096"
            # each job declares its memory use through the sim dir (env GPUFLEET_SIM_DIR set by job_env)
            p = procs.sim_use(use, env, seconds=60, busy=True)
            jobs[job_id] = p
            pgids[job_id] = p.pid
            gs.attach(job_id, p.pid, [d], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            for _ in range(100):
                await asyncio.sleep(0.1)
                if stops and not is_alive(jobs["greedy"]):
                    break
            await asyncio.sleep(0.6)  # neighbours keep running after the stop
            assert [(j, r) for j, r, _ in stops] == [("greedy", "GPU_MEMORY_LIMIT_EXCEEDED")]
            assert str(9000 * 1024 * 1024) in stops[0][2] and str(4096 * 1024 * 1024) in stops[0][2]
            assert not is_alive(jobs["greedy"])
            assert is_alive(jobs["small"]) and is_alive(jobs["medium"])
            await gs.sample_once()
            sample = gs.telemetry()[0]
            assert sample.memory_used_mib == 7000  # the greedy job's memory is gone
            for job_id in ("small", "medium"):
                u = gs.job_usage(job_id)
                assert u is not None and u.used_mib == plan[job_id][2] and u.sliced
            assert gs.job_usage("greedy") is None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
