"""JobManager reconciling desired state with real processes, over the real GpuSharing on simulated GPUs:
starts, stops, attempts, acknowledgements, enforcement stops, and jobs that cannot start."""

from __future__ import annotations

import asyncio
import collections.abc
import sys
from pathlib import Path

import pytest

from gpufleet.agent.backends.simulated import SimulatedBackend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.agent.jobs.manager import JobManager
from gpufleet.agent.local_state import EXITED, FAILED_TO_START, RUNNING, JobRecord, LocalState
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb


def djob(job_id: str, command: list[str], attempt: int = 1, gpu: int = 0, **dev: object) -> apb.DesiredJob:
    return apb.DesiredJob(
        job_id=job_id,
        attempt=attempt,
        spec=pb.JobSpec(command=command),
        assignment=pb.TaskAssignment(node="n1", devices=[pb.DeviceAssignment(gpu_index=gpu, **dev)]),  # type: ignore[arg-type]
        grace_period_s=2,
    )


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.exits: list[JobRecord] = []
        self.state = LocalState(tmp_path / "state")
        self.backend = SimulatedBackend([("H100-80GB", 2)], tmp_path / "state", node_name="n1")
        self.jobs = JobManager(self.state, on_exit=self.exits.append, extra_env=self.backend.job_env())
        config = SharingConfig(busy_sample_interval_s=0.1, idle_sample_interval_s=0.2, memory_grace_s=0)
        self.sharing = GpuSharing(self.backend, tmp_path / "state", config, self.jobs.stop_job)
        self.jobs.sharing = self.sharing

    async def wait(self, job_id: str, state: str, attempt: int = 1, timeout: float = 10) -> JobRecord:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            self.jobs.check()
            rec = self.jobs.records.get((job_id, attempt))
            if rec is not None and rec.state == state:
                return rec
            await asyncio.sleep(0.05)
        raise AssertionError(f"{job_id} never reached {state}: {self.jobs.records.get((job_id, attempt))}")


@pytest.fixture
async def h(tmp_path: Path) -> collections.abc.AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    runner = asyncio.get_running_loop().create_task(harness.sharing.run())
    try:
        yield harness
    finally:
        await harness.jobs.reconcile([])
        for rec in list(harness.jobs.records.values()):
            if not rec.finished:
                await harness.jobs.runner.stop(rec, "TEST_CLEANUP", "", 0.1)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_start_stop_and_acknowledge(h: Harness) -> None:
    await h.jobs.reconcile([djob("j-1", ["sleep", "300"])])
    rec = await h.wait("j-1", RUNNING)
    [lj] = h.jobs.local_jobs()
    assert lj.state == apb.LOCAL_JOB_STATE_RUNNING and lj.pid == rec.pid
    assert "j-1" in h.sharing.job_ids()  # attached to GPU sharing
    await h.jobs.reconcile([])
    done = await h.wait("j-1", EXITED)
    assert done.reason == "STOPPED" and done.exit_code == 143 and "j-1" not in h.sharing.job_ids()
    assert [e.job_id for e in h.exits] == ["j-1"]
    # still desired after finishing (a stale DesiredState): never started again
    await h.jobs.reconcile([djob("j-1", ["sleep", "300"])])
    assert h.jobs.records[("j-1", 1)].state == EXITED
    await h.jobs.reconcile([], acknowledged=["j-1"])
    assert h.jobs.local_jobs() == []
    await h.jobs.reconcile([djob("j-1", ["sleep", "300"])])
    assert h.jobs.local_jobs() == []  # acknowledged attempts are tombstoned
    assert h.jobs.log_path("j-1") is not None


async def test_new_attempt_starts_after_the_old_one_stopped(h: Harness) -> None:
    await h.jobs.reconcile([djob("j-2", [sys.executable, "-c", "import time; time.sleep(300)"])])
    first = await h.wait("j-2", RUNNING)
    await h.jobs.reconcile([djob("j-2", ["sleep", "300"], attempt=2)])
    assert ("j-2", 2) not in h.jobs.records  # waits for attempt 1 to end
    await h.wait("j-2", EXITED)
    second = await h.wait("j-2", RUNNING, attempt=2)
    assert second.pid != first.pid


async def test_jobs_that_cannot_start(h: Harness) -> None:
    await h.jobs.reconcile(
        [
            djob("j-nogpu", ["sleep", "1"], gpu=7),
            djob("../escape", ["sleep", "1"]),
            djob("j-noexe", ["/nonexistent/bin/train"]),
        ]
    )
    by_id = {lj.job_id: lj for lj in h.jobs.local_jobs()}
    assert all(lj.state == apb.LOCAL_JOB_STATE_FAILED_TO_START for lj in by_id.values())
    assert "no GPU 7" in by_id["j-nogpu"].message
    assert "job id" in by_id["../escape"].message
    assert "/nonexistent/bin/train" in by_id["j-noexe"].message
    assert {r.job_id for r in h.exits} == set(by_id)
    assert all(r.state == FAILED_TO_START for r in h.jobs.records.values())
    await h.jobs.reconcile([], acknowledged=list(by_id))
    assert h.jobs.local_jobs() == []


async def test_memory_limit_violation_stops_the_job_with_its_reason(h: Harness) -> None:
    cmd = [sys.executable, "-m", "gpufleet.agent.backends.simulated.use", "--mib", "30000"]
    job = djob("j-hog", cmd, mode=pb.SHARING_MODE_SHARED, gpu_milli=250, gpu_memory_mib=20000)
    await h.jobs.reconcile([job])
    await h.wait("j-hog", RUNNING)
    done = await h.wait("j-hog", EXITED, timeout=15)
    assert done.reason == "GPU_MEMORY_LIMIT_EXCEEDED" and "20000" in done.message


async def test_max_runtime_is_enforced_locally(h: Harness) -> None:
    job = djob("j-slow", ["sleep", "300"])
    job.spec.max_runtime_s = 1
    await h.jobs.reconcile([job])
    done = await h.wait("j-slow", EXITED, timeout=10)
    assert done.reason == "MAX_RUNTIME_EXCEEDED" and done.exit_code == 143
