"""On a real NVIDIA GPU host (marker ``gpu``; skipped elsewhere): the agent with the NVML backend registers the
real GPU, runs CUDA jobs that see exactly their GPU, reports their GPU memory, stops a job above its memory
limit (LimitExceeded + GPU_MEMORY_LIMIT_EXCEEDED), and re-adopts a CUDA job after kill -9 of the agent."""

from __future__ import annotations

import collections.abc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.integration.agent_process import AgentProcess, kill_group
from tests.integration.fake_coordinator import FakeCoordinator, FakeCoordinatorServer

pytestmark = pytest.mark.gpu


def _has_cuda_torch() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


if not _has_cuda_torch():
    pytest.skip("needs an NVIDIA GPU, nvidia-smi and torch with CUDA", allow_module_level=True)

ALLOC = (
    "import os, time, torch; x = torch.empty({mib} * 2**20, dtype=torch.uint8, device='cuda'); "
    "print('visible', os.environ['CUDA_VISIBLE_DEVICES'], torch.cuda.device_count(), flush=True); time.sleep(300)"
)
EXITED = apb.LOCAL_JOB_STATE_EXITED


def shared_job(job_id: str, mib: int, limit_mib: int, uuid: str) -> apb.DesiredJob:
    return apb.DesiredJob(
        job_id=job_id,
        attempt=1,
        spec=pb.JobSpec(command=[sys.executable, "-c", ALLOC.format(mib=mib)]),
        assignment=pb.TaskAssignment(
            node="gpu-node",
            devices=[
                pb.DeviceAssignment(
                    gpu_index=0, gpu_uuid=uuid, mode=pb.SHARING_MODE_SHARED, gpu_milli=250, gpu_memory_mib=limit_mib
                )
            ],
        ),
        grace_period_s=5,
    )


@pytest.fixture
async def coordinator() -> collections.abc.AsyncIterator[FakeCoordinatorServer]:
    server = await FakeCoordinatorServer(FakeCoordinator(status_interval_ms=300)).start()
    try:
        yield server
    finally:
        await server.stop()


async def test_nvml_agent_runs_enforces_and_readopts_cuda_jobs(
    coordinator: FakeCoordinatorServer, tmp_path: Path
) -> None:
    fc = coordinator.servicer
    agent = AgentProcess(tmp_path, coordinator.address, name="gpu-node", simulate=None)
    try:
        agent.start()
        [reg] = await fc.wait_for(lambda: fc.registers, timeout=30, what="Register")
        assert reg.inventory.gpu_backend == "nvml" and reg.inventory.gpus
        uuid = reg.inventory.gpus[0].uuid
        assert uuid in subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
        fc.set_desired(shared_job("j-use", 1024, 40000, uuid), shared_job("j-hog", 4096, 1000, uuid))

        hog = await fc.wait_for(lambda: (j := fc.last_job("j-hog")) and j.state == EXITED and j, 60, "hog stopped")
        assert hog.reason == "GPU_MEMORY_LIMIT_EXCEEDED"
        [limit] = [e.limit_exceeded for e in fc.events() if e.WhichOneof("body") == "limit_exceeded"]
        assert limit.job_id == "j-hog" and limit.allowed_mib == 1000 and limit.observed_mib > 1000

        use = await fc.wait_for(
            lambda: (j := fc.last_job("j-use")) and j.gpu_memory_used_mib >= 1024 and j, 60, "j-use GPU memory"
        )
        agent.kill9()
        fc.registers.clear()
        agent.start()
        [reg2] = await fc.wait_for(lambda: fc.registers, timeout=30, what="re-register")
        [again] = [j for j in reg2.jobs if j.job_id == "j-use"]
        assert again.state == apb.LOCAL_JOB_STATE_RUNNING and again.pid == use.pid

        fc.send_command(apb.Command(command_id="c1", read_logs=apb.ReadLogs(request_id="r1", job_id="j-use")))
        await fc.wait_for(lambda: any(m.WhichOneof("body") == "log_data" for m in fc.received), 10, "logs")
        text = b"".join(m.log_data.data for m in fc.received if m.WhichOneof("body") == "log_data").decode()
        assert f"visible {uuid} 1" in text

        fc.ack("j-hog")
        fc.set_desired()
        stopped = await fc.wait_for(lambda: (j := fc.last_job("j-use")) and j.state == EXITED and j, 30, "stop")
        assert stopped.reason == "STOPPED"
        assert agent.terminate() == 0
    finally:
        agent.kill9()
        for rec in (agent.state_dir / "jobs").glob("*/record.json"):
            kill_group(json.loads(rec.read_text())["pgid"])
