"""AgentDaemon in-process (real GpuSharing over the simulated backend, real gRPC stream to the scripted peer):
MIG commands answered with CommandResult and the new inventory, a GPU turning unhealthy raises GpuUnhealthy,
drain is acknowledged, and a job on a MIG slice sees its MIG device."""

from __future__ import annotations

import asyncio
import collections.abc
from pathlib import Path

import pytest

from gpufleet.agent.backends.simulated import SimulatedBackend
from gpufleet.agent.config import load_settings
from gpufleet.agent.daemon import AgentDaemon
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.integration.fake_coordinator import FakeCoordinator, FakeCoordinatorServer


@pytest.fixture
async def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> collections.abc.AsyncIterator[tuple[FakeCoordinator, AgentDaemon, SimulatedBackend]]:
    for k in ("GPUFLEET_COORDINATOR",):
        monkeypatch.delenv(k, raising=False)
    server = await FakeCoordinatorServer(FakeCoordinator(status_interval_ms=200)).start()
    settings = load_settings(
        None,
        {
            "name": "node-1",
            "coordinators": server.address,
            "state_dir": tmp_path / "state",
            "gpu_backend": "simulate:H100-80GB:2",
            "address": "127.0.0.1",
            "labels": {"pool": "a"},
            "provider": "aws",
            "region": "us-east-1",
            "jobs": {"check_interval_s": 0.1},
            "sharing": {"busy_sample_interval_s": 0.2, "idle_sample_interval_s": 0.2},
            "interruptions": {"provider": "none"},
        },
    )
    backend = SimulatedBackend([("H100-80GB", 2)], settings.state_dir, node_name="node-1")
    daemon = AgentDaemon(settings, backend=backend)
    task = asyncio.get_running_loop().create_task(daemon.run())
    try:
        yield server.servicer, daemon, backend
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
        for rec in daemon.jobs.records.values():
            if not rec.finished:
                await daemon.jobs.runner.stop(rec, "TEST_CLEANUP", "", 0.1)
        await server.stop()


def result(fc: FakeCoordinator, cid: str) -> apb.CommandResult | None:
    for m in fc.received:
        if m.WhichOneof("body") == "command_result" and m.command_result.command_id == cid:
            return m.command_result
    return None


async def test_mig_commands_health_events_and_drain(
    running: tuple[FakeCoordinator, AgentDaemon, SimulatedBackend], tmp_path: Path
) -> None:
    fc, daemon, backend = running
    [reg] = await fc.wait_for(lambda: fc.registers, what="Register")
    inv = reg.inventory
    assert (inv.provider, inv.region, dict(inv.labels), inv.gpu_backend) == (
        "aws",
        "us-east-1",
        {"pool": "a"},
        "simulated",
    )
    assert inv.gpus[1].mig_capable and inv.gpus[1].mig_mode == pb.MIG_MODE_DISABLED

    fc.send_command(apb.Command(command_id="m1", set_mig_mode=apb.SetMigMode(gpu_index=1, enabled=True)))
    r1 = await fc.wait_for(lambda: result(fc, "m1"), what="set_mig_mode result")
    assert r1.ok, r1.message
    assert r1.gpus[1].mig_mode == pb.MIG_MODE_ENABLED

    fc.send_command(
        apb.Command(command_id="m2", apply_mig_layout=apb.ApplyMigLayout(gpu_index=1, profiles=["3g.40gb", "3g.40gb"]))
    )
    r2 = await fc.wait_for(lambda: result(fc, "m2"), what="apply_mig_layout result")
    assert r2.ok, r2.message
    slices = list(r2.gpus[1].mig_instances)
    assert [s.profile for s in slices] == ["3g.40gb", "3g.40gb"] and all(s.uuid for s in slices)

    fc.send_command(apb.Command(command_id="m3", apply_mig_layout=apb.ApplyMigLayout(gpu_index=0, profiles=["9g.1tb"])))
    r3 = await fc.wait_for(lambda: result(fc, "m3"), what="bad layout result")
    assert not r3.ok and r3.message  # refused with a reason, the agent keeps running

    # a job on a MIG slice sees only that MIG device; the inventory says which job uses the slice
    out = tmp_path / "cvd"
    fc.set_desired(
        apb.DesiredJob(
            job_id="j-mig",
            attempt=1,
            spec=pb.JobSpec(command=["sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" > {out}; sleep 300']),
            assignment=pb.TaskAssignment(
                node="node-1",
                devices=[
                    pb.DeviceAssignment(
                        gpu_index=1, mode=pb.SHARING_MODE_MIG, mig_profile="3g.40gb", mig_device_uuid=slices[0].uuid
                    )
                ],
            ),
        )
    )
    await fc.wait_for(lambda: out.exists() and out.read_text().strip(), what="MIG job started")
    assert out.read_text().strip() == slices[0].uuid

    def slice_owner() -> str:
        for s in reversed(fc.statuses()):
            if s.gpu_inventory:
                return s.gpu_inventory[1].mig_instances[0].job_id
        return ""

    await fc.wait_for(lambda: slice_owner() == "j-mig", what="inventory shows the slice's job")

    backend.inject_xid(0, 79, "XID 79: GPU has fallen off the bus")
    unhealthy = await fc.wait_for(
        lambda: [e.gpu_unhealthy for e in fc.events() if e.WhichOneof("body") == "gpu_unhealthy"],
        what="GpuUnhealthy event",
    )
    assert unhealthy[0].gpu_index == 0 and "XID 79" in unhealthy[0].reason

    fc.send_command(apb.Command(command_id="d1", drain=apb.Drain(reason="maintenance", deadline_ms=1)))
    r4 = await fc.wait_for(lambda: result(fc, "d1"), what="drain result")
    assert r4.ok and daemon.draining is not None and daemon.draining.reason == "maintenance"
    fc.set_desired()
    await fc.wait_for(
        lambda: (j := fc.last_job("j-mig")) and j.state == apb.LOCAL_JOB_STATE_EXITED, what="MIG job stopped"
    )
