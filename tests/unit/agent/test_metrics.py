"""Prometheus metrics: DCGM-compatible GPU series, per-job series and enforcement counters over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.agent.metrics import start_metrics_server
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import processes


async def test_metrics_endpoint_serves_gpu_and_job_series(tmp_path: Path) -> None:
    stops: list[str] = []

    async def stop(job_id: str, reason: str, message: str) -> None:
        stops.append(job_id)

    registry = CollectorRegistry()
    backend = create_backend("simulate:H100-80GB:2", tmp_path, node_name="n1")
    gs = GpuSharing(backend, tmp_path, SharingConfig(memory_grace_s=0), stop, registry=registry)
    server, thread = start_metrics_server(0, registry=registry)
    try:
        with processes() as procs:
            d = pb.DeviceAssignment(gpu_index=1, mode=pb.SHARING_MODE_SHARED, gpu_milli=500, gpu_memory_mib=1024)
            p = procs.sim_use(2048, gs.job_env("j1", [d]))
            gs.attach("j1", p.pid, [d], strict=False)
            for _ in range(100):
                await gs.sample_once()
                await asyncio.sleep(0)
                if stops:
                    break
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        server.shutdown()
        thread.join(timeout=5)
    uuid1 = gs.inventory()[1].uuid
    assert 'DCGM_FI_DEV_FB_USED{Hostname="' in text
    fb_used = next(line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_FB_USED") and uuid1 in line)
    assert fb_used.endswith(" 2048.0")
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"):
        assert f"\n{name}{{" in text
    assert 'gpufleet_job_gpu_memory_used_bytes{job_id="j1"} 2.147483648e+09' in text
    assert 'gpufleet_job_gpu_memory_limit_bytes{job_id="j1"} 1.073741824e+09' in text
    assert 'gpufleet_job_share_achieved_ratio{job_id="j1"} 1.0' in text
    assert 'gpufleet_enforcement_actions_total{action="stop",reason="GPU_MEMORY_LIMIT_EXCEEDED"} 1.0' in text
