"""The agent daemon (a real subprocess) against a scripted AgentService peer on loopback: desired jobs start,
removed jobs stop, exits are reported until acknowledged, the agent reconnects after the coordinator restarts
(its jobs keep running meanwhile), and follows redirects to the leader."""

from __future__ import annotations

import asyncio
import collections.abc
import json
import os
import socket
from pathlib import Path

import pytest

from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.fakes.metadata import FakeMetadata
from tests.integration.agent_process import AgentProcess, kill_group, pid_alive
from tests.integration.fake_coordinator import FakeCoordinator, FakeCoordinatorServer

EXITED = apb.LOCAL_JOB_STATE_EXITED
RUNNING = apb.LOCAL_JOB_STATE_RUNNING


def desired_job(job_id: str, command: list[str], *, attempt: int = 1, **spec: object) -> apb.DesiredJob:
    return apb.DesiredJob(
        job_id=job_id,
        attempt=attempt,
        spec=pb.JobSpec(name=job_id, command=command, **spec),  # type: ignore[arg-type]
        assignment=pb.TaskAssignment(
            node="node-1",
            devices=[pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_EXCLUSIVE, gpu_milli=1000)],
        ),
        grace_period_s=2,
    )


@pytest.fixture
async def coordinator() -> collections.abc.AsyncIterator[FakeCoordinatorServer]:
    server = await FakeCoordinatorServer(FakeCoordinator()).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def agents() -> collections.abc.Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for a in started:
            a.kill9()
        for a in started:
            jobs_dir = a.state_dir / "jobs"
            for rec in jobs_dir.glob("*/record.json") if jobs_dir.exists() else []:
                pgid = json.loads(rec.read_text()).get("pgid", 0)
                if pgid > 0:
                    kill_group(pgid)


async def test_desired_jobs_start_stop_and_exits_are_reported_until_acknowledged(
    coordinator: FakeCoordinatorServer, agents: list[AgentProcess], tmp_path: Path
) -> None:
    fc = coordinator.servicer
    agent = AgentProcess(tmp_path, coordinator.address).start()
    agents.append(agent)
    reg = await fc.wait_for(lambda: fc.registers, what="Register")
    inv = reg[0].inventory
    assert inv.name == "node-1" and inv.address == "127.0.0.1" and len(inv.gpus) == 2
    assert inv.gpus[0].model == "H100-80GB" and inv.gpus[0].uuid and inv.cpu_milli > 0 and inv.memory_mib > 0

    env_file = tmp_path / "env.txt"
    gang = desired_job("j-gang", ["sh", "-c", f"env > {env_file}"], env={"MY_VAR": "x"})
    gang.assignment.node_rank = 1
    gang.assignment.nnodes = 2
    gang.assignment.world_size = 2
    gang.assignment.master_addr = "10.0.0.5"
    gang.assignment.master_port = 29501
    gang.assignment.devices[0].gpu_uuid = inv.gpus[0].uuid
    fc.set_desired(
        desired_job("j-long", ["sleep", "300"]),
        gang,
        desired_job("j-missing", ["definitely-not-a-command-xyz"]),
    )

    long_job = await fc.wait_for(
        lambda: (j := fc.last_job("j-long")) and j.state == RUNNING and j.pid and j, what="j-long running"
    )
    assert pid_alive(long_job.pid)

    gang_done = await fc.wait_for(lambda: (j := fc.last_job("j-gang")) and j.state == EXITED and j, what="gang exit")
    assert gang_done.exit_code == 0 and gang_done.node_rank == 1
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert env["CUDA_VISIBLE_DEVICES"] == inv.gpus[0].uuid
    assert env["GPUFLEET_JOB_ID"] == "j-gang" and env["GPUFLEET_ATTEMPT"] == "1" and env["MY_VAR"] == "x"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29501")
    assert (env["WORLD_SIZE"], env["RANK"], env["NODE_RANK"], env["NNODES"]) == ("2", "1", "1", "2")
    assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["HOROVOD_RANK"], env["HOROVOD_SIZE"]) == (
        "0",
        "1",
        "1",
        "2",
    )
    assert not any(k.startswith("GPUFLEET_AGENT__") for k in env)

    missing = await fc.wait_for(
        lambda: (j := fc.last_job("j-missing")) and j.state == apb.LOCAL_JOB_STATE_FAILED_TO_START and j,
        what="FAILED_TO_START",
    )
    assert "definitely-not-a-command-xyz" in missing.message and "not found" in missing.message
    exited_events = {e.job_exited.job.job_id for e in fc.events() if e.WhichOneof("body") == "job_exited"}
    assert {"j-gang", "j-missing"} <= exited_events

    # the exit keeps being reported in every status until the coordinator acknowledges it
    n = len(fc.statuses())
    await fc.wait_for(lambda: len(fc.statuses()) >= n + 3, what="more statuses")
    assert all("j-gang" in {j.job_id for j in s.jobs} for s in fc.statuses()[n:])
    fc.ack("j-gang", "j-missing")
    fc.set_desired(desired_job("j-long", ["sleep", "300"]))
    await fc.wait_for(lambda: "j-gang" not in {j.job_id for j in fc.statuses()[-1].jobs}, what="ack honoured")
    n = len(fc.statuses())
    await fc.wait_for(lambda: len(fc.statuses()) >= n + 2, what="more statuses")
    assert all({"j-gang", "j-missing"}.isdisjoint(j.job_id for j in s.jobs) for s in fc.statuses()[n:])

    # removal from the desired state stops the job (SIGTERM: 128 + 15)
    fc.set_desired()
    stopped = await fc.wait_for(lambda: (j := fc.last_job("j-long")) and j.state == EXITED and j, what="stop")
    assert stopped.reason == "STOPPED" and stopped.exit_code == 143
    assert not pid_alive(long_job.pid)

    # logs are answered by offset and by tail
    fc.ack("j-long")
    log_job = desired_job("j-log", ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"])
    fc.set_desired(log_job)
    await fc.wait_for(lambda: (j := fc.last_job("j-log")) and j.state == EXITED, what="j-log exit")
    fc.send_command(apb.Command(command_id="c1", read_logs=apb.ReadLogs(request_id="r1", job_id="j-log", tail_lines=2)))
    fc.send_command(apb.Command(command_id="c2", read_logs=apb.ReadLogs(request_id="r2", job_id="j-log", offset=6)))

    def log_data(rid: str) -> list[apb.LogData]:
        return [m.log_data for m in fc.received if m.WhichOneof("body") == "log_data" and m.log_data.request_id == rid]

    await fc.wait_for(lambda: any(d.eof for d in log_data("r1")) and any(d.eof for d in log_data("r2")), what="logs")
    assert b"".join(d.data for d in log_data("r1")) == b"line4\nline5\n"
    r2 = log_data("r2")
    assert r2[0].offset == 6 and b"".join(d.data for d in r2) == b"line2\nline3\nline4\nline5\n"

    assert agent.terminate() == 0  # SIGTERM: the agent exits cleanly


async def test_reconnects_after_coordinator_restart_and_jobs_keep_running(
    coordinator: FakeCoordinatorServer, agents: list[AgentProcess], tmp_path: Path
) -> None:
    fc = coordinator.servicer
    agents.append(AgentProcess(tmp_path, coordinator.address).start())
    fc.set_desired(desired_job("j-keep", ["sleep", "300"]))
    job = await fc.wait_for(lambda: (j := fc.last_job("j-keep")) and j.state == RUNNING and j, what="running")

    await coordinator.stop()
    fresh = FakeCoordinator()
    fresh.set_desired(desired_job("j-keep", ["sleep", "300"]))
    await asyncio.sleep(1.5)  # the agent is disconnected meanwhile
    assert pid_alive(job.pid)

    coordinator.servicer = fresh
    await coordinator.start()
    reg = await fresh.wait_for(lambda: fresh.registers, what="re-register")
    [again] = [j for j in reg[0].jobs if j.job_id == "j-keep"]
    assert again.state == RUNNING and again.pid == job.pid
    await fresh.wait_for(lambda: fresh.statuses(), what="status after reconnect")
    assert pid_alive(job.pid)
    os.killpg(job.pid, 9)


async def test_follows_redirect_not_leader_metadata_and_the_address_list(
    agents: list[AgentProcess], tmp_path: Path
) -> None:
    leader = await FakeCoordinatorServer(FakeCoordinator()).start()
    follower = await FakeCoordinatorServer(FakeCoordinator(redirect_to=leader.address)).start()
    refuser = await FakeCoordinatorServer(FakeCoordinator(not_leader_hint=leader.address)).start()
    try:
        with socket.socket() as s:  # an address where nothing listens: the agent moves on down its list
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        a1 = AgentProcess(tmp_path / "a1", follower.address, name="node-a")
        a2 = AgentProcess(tmp_path / "a2", refuser.address, name="node-b")
        a3 = AgentProcess(tmp_path / "a3", f"{dead},{leader.address}", name="node-c")
        for a in (a1, a2, a3):
            a.workdir.mkdir()
            agents.append(a.start())
        names = await leader.servicer.wait_for(
            lambda: (
                {"node-a", "node-b", "node-c"} <= (n := {r.inventory.name for r in leader.servicer.registers}) and n
            ),
            what="all agents registered at the leader",
        )
        assert names == {"node-a", "node-b", "node-c"}
        assert follower.servicer.connects >= 1 and refuser.servicer.connects >= 1
        await leader.servicer.wait_for(lambda: len(leader.servicer.statuses()) >= 2, what="statuses at the leader")
    finally:
        for s in (leader, follower, refuser):
            await s.stop()


async def test_spot_interruption_notice_is_forwarded_and_resent_after_reconnect(
    coordinator: FakeCoordinatorServer, agents: list[AgentProcess], tmp_path: Path
) -> None:
    metadata = FakeMetadata().start()
    try:
        metadata.gcp_preempted = True
        env = {
            "GPUFLEET_AGENT__INTERRUPTIONS__PROVIDER": "gcp",
            "GPUFLEET_AGENT__INTERRUPTIONS__GCP_ENDPOINT": metadata.url,
            "GPUFLEET_AGENT__INTERRUPTIONS__POLL_INTERVAL_S": "0.2",
        }
        agents.append(AgentProcess(tmp_path, coordinator.address, env=env).start())
        fc = coordinator.servicer

        def notices() -> list[apb.SpotInterruption]:
            return [e.spot_interruption for e in fc.events() if e.WhichOneof("body") == "spot_interruption"]

        [notice] = await fc.wait_for(notices, what="spot interruption event")
        assert notice.provider == "gcp" and notice.kind == "preempt"
        await coordinator.stop()
        fc.received.clear()
        await coordinator.start()
        [again] = await fc.wait_for(notices, what="notice re-sent after reconnect")
        assert again.kind == "preempt"
    finally:
        metadata.stop()
