"""Jobs survive the agent: kill -9 the agent (a real subprocess) while jobs run, restart it, and check that
running jobs are re-adopted (same pid), a job that finished meanwhile is reported with its exit code, a
record whose pid now belongs to another process (recycled pid) is never adopted, and later exits are still
collected."""

from __future__ import annotations

import asyncio
import collections.abc
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest

from gpufleet.agent.local_state import RUNNING as REC_RUNNING
from gpufleet.agent.local_state import JobRecord
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.integration.agent_process import AgentProcess, kill_group, pid_alive
from tests.integration.fake_coordinator import FakeCoordinator, FakeCoordinatorServer

EXITED = apb.LOCAL_JOB_STATE_EXITED
RUNNING = apb.LOCAL_JOB_STATE_RUNNING


def wait_file_then_exit(path: Path, code: int) -> list[str]:
    return ["sh", "-c", f'while [ ! -e "{path}" ]; do sleep 0.05; done; exit {code}']


def desired(job_id: str, command: list[str]) -> apb.DesiredJob:
    return apb.DesiredJob(
        job_id=job_id,
        attempt=1,
        spec=pb.JobSpec(name=job_id, command=command),
        assignment=pb.TaskAssignment(node="node-1", devices=[pb.DeviceAssignment(gpu_index=1, gpu_milli=1000)]),
        grace_period_s=2,
    )


@pytest.fixture
async def coordinator() -> collections.abc.AsyncIterator[FakeCoordinatorServer]:
    server = await FakeCoordinatorServer(FakeCoordinator()).start()
    try:
        yield server
    finally:
        await server.stop()


async def test_jobs_survive_agent_kill9_and_are_readopted(coordinator: FakeCoordinatorServer, tmp_path: Path) -> None:
    fc = coordinator.servicer
    agent = AgentProcess(tmp_path, coordinator.address)
    bystander = subprocess.Popen(["sleep", "300"])  # owns the pid a forged record will point at
    pgids: list[int] = []
    try:
        agent.start()
        release_a, release_c = tmp_path / "release-a", tmp_path / "release-c"
        fc.set_desired(
            desired("j-a", wait_file_then_exit(release_a, 5)), desired("j-c", wait_file_then_exit(release_c, 6))
        )
        a = await fc.wait_for(lambda: (j := fc.last_job("j-a")) and j.state == RUNNING and j, what="j-a running")
        c = await fc.wait_for(lambda: (j := fc.last_job("j-c")) and j.state == RUNNING and j, what="j-c running")
        pgids += [a.pid, c.pid]

        agent.kill9()
        assert pid_alive(a.pid) and pid_alive(c.pid)  # the jobs do not die with the agent
        release_c.touch()  # j-c finishes while no agent runs
        await fc.wait_for(lambda: not pid_alive(c.pid), what="j-c exit while the agent is down")

        # a record whose pid was recycled by an unrelated process: same pid, different start time
        forged_dir = agent.state_dir / "jobs" / "j-recycled.1"
        forged_dir.mkdir(parents=True)
        forged = JobRecord(
            job_id="j-recycled",
            attempt=1,
            state=REC_RUNNING,
            dir=str(forged_dir),
            pid=bystander.pid,
            pgid=bystander.pid,
            create_time=psutil.Process(bystander.pid).create_time() - 3600,
            started_ms=1,
        )
        (forged_dir / "record.json").write_text(forged.to_json())

        fc.registers.clear()
        agent.start()
        [reg] = await fc.wait_for(lambda: fc.registers, what="re-register")
        jobs = {j.job_id: j for j in reg.jobs}
        assert jobs["j-a"].state == RUNNING and jobs["j-a"].pid == a.pid  # re-adopted, same process
        assert jobs["j-c"].state == EXITED and jobs["j-c"].exit_code == 6  # collected from the exit file
        assert jobs["j-recycled"].state == EXITED and jobs["j-recycled"].reason == "LOST_ON_NODE"
        assert jobs["j-recycled"].exit_code == -1
        assert bystander.poll() is None  # the unrelated process was not touched

        # still desired but finished: never started a second time
        await fc.wait_for(lambda: len(fc.statuses()) >= 3, what="statuses")
        assert fc.last_job("j-c").state == EXITED  # type: ignore[union-attr]

        release_a.touch()
        done = await fc.wait_for(lambda: (j := fc.last_job("j-a")) and j.state == EXITED and j, what="j-a exit")
        assert done.exit_code == 5 and done.pid == a.pid
        assert agent.terminate() == 0
    finally:
        agent.kill9()
        bystander.kill()
        bystander.wait()
        for pgid in pgids:
            kill_group(pgid)


async def test_agent_sigterm_leaves_jobs_running_with_systemd_notify_and_metrics(
    coordinator: FakeCoordinatorServer, tmp_path: Path
) -> None:
    fc = coordinator.servicer
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    agent = AgentProcess(
        tmp_path,
        coordinator.address,
        extra=("--metrics-port", str(metrics_port)),
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "GPUFLEET_AGENT__METRICS_HOST": "127.0.0.1"},
    ).start()
    pgid = 0
    try:
        assert notify.recv(1024).startswith(b"READY=1")
        fc.set_desired(desired("j-stay", ["sleep", "300"]))
        job = await fc.wait_for(lambda: (j := fc.last_job("j-stay")) and j.state == RUNNING and j, what="running")
        pgid = job.pid
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        )
        assert "DCGM_FI_DEV_FB_USED" in body
        assert agent.terminate() == 0
        assert notify.recv(1024) == b"STOPPING=1"
        assert pid_alive(job.pid)  # only the agent exits
    finally:
        notify.close()
        agent.kill9()
        if pgid:
            kill_group(pgid)
