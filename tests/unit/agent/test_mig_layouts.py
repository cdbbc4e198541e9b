"""MIG through GpuSharing on simulated H100/A100: layout validation, in-use protection, mode changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.common.errors import FailedPreconditionError, InvalidInputError, UnsupportedOperationError
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import processes


async def _noop(job_id: str, reason: str, message: str) -> None:
    return None


async def mig_sharing(tmp_path: Path) -> GpuSharing:
    backend = create_backend("simulate:H100-80GB:1,A100-40GB:1,A100-80GB:1,L4:1", tmp_path, node_name="n1")
    gs = GpuSharing(backend, tmp_path, SharingConfig(), _noop, registry=CollectorRegistry())
    for i in range(3):
        await gs.set_mig_mode(i, True)
    return gs


VALID = [
    (0, ["7g.80gb"]),
    (0, ["3g.40gb", "3g.40gb"]),
    (0, ["4g.40gb", "2g.20gb", "1g.10gb"]),
    (0, ["1g.10gb"] * 7),
    (0, ["2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"]),
    (0, ["1g.20gb"] * 4),
    (1, ["3g.20gb", "2g.10gb", "1g.5gb"]),
    (1, ["1g.5gb"] * 7),
    (2, ["4g.40gb", "3g.40gb"]),
]
INVALID = [
    (0, ["4g.40gb", "4g.40gb"], "needs 8 compute slices"),
    (0, ["1g.10gb+me", "1g.10gb+me"], r"at most 1 x 1g\.10gb\+me"),
    (0, ["3g.40gb", "3g.40gb", "1g.10gb"], "memory slices"),
    (0, ["1g.10gb"] * 8, "compute slices"),
    (0, ["3g.20gb"], "no MIG profile '3g.20gb'"),  # an A100-40GB profile name
    (1, ["7g.80gb"], "no MIG profile '7g.80gb'"),
    (1, ["4g.20gb", "3g.20gb", "1g.5gb"], "compute slices"),
    (2, ["2g.20gb", "2g.20gb", "2g.20gb", "2g.20gb"], "needs 8 compute slices"),
    (2, ["1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb"], "memory slices"),
]


@pytest.mark.parametrize(("gpu", "profiles"), VALID)
async def test_valid_layouts_are_applied_with_mig_uuids(tmp_path: Path, gpu: int, profiles: list[str]) -> None:
    gs = await mig_sharing(tmp_path)
    devices = await gs.apply_mig_layout(gpu, profiles)
    assert sorted(d.profile for d in devices) == sorted(profiles)
    assert len({d.uuid for d in devices}) == len(profiles) and all(d.uuid.startswith("MIG-") for d in devices)
    assert gs.inventory()[gpu].mig_devices == tuple(devices)


@pytest.mark.parametrize(("gpu", "profiles", "needle"), INVALID)
async def test_invalid_layouts_are_refused(tmp_path: Path, gpu: int, profiles: list[str], needle: str) -> None:
    gs = await mig_sharing(tmp_path)
    with pytest.raises(InvalidInputError, match=needle):
        await gs.apply_mig_layout(gpu, profiles)


async def test_non_mig_gpu(tmp_path: Path) -> None:
    gs = await mig_sharing(tmp_path)
    with pytest.raises(UnsupportedOperationError, match="L4"):
        await gs.apply_mig_layout(3, ["1g.10gb"])
    with pytest.raises(UnsupportedOperationError):
        await gs.set_mig_mode(3, True)


async def test_relayout_refused_while_a_job_uses_a_slice_that_would_change(tmp_path: Path) -> None:
    gs = await mig_sharing(tmp_path)
    devices = await gs.apply_mig_layout(0, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    used = next(d for d in devices if d.profile == "2g.20gb")
    assignment = pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_MIG, mig_device_uuid=used.uuid)
    env = gs.job_env("trainer", [assignment])
    assert env["CUDA_VISIBLE_DEVICES"] == used.uuid
    gs.attach("trainer", 999999, [assignment], strict=False)
    with pytest.raises(FailedPreconditionError, match=r"2g\.20gb .*used by job trainer"):
        await gs.apply_mig_layout(0, ["7g.80gb"])
    with pytest.raises(FailedPreconditionError, match="trainer"):
        await gs.apply_mig_layout(0, ["4g.40gb", "2g.20gb", "1g.10gb"])  # 4g needs slices 0-3, 2g sits at 0
    # a layout that keeps the used slice in place is fine, and keeps its UUID
    after = await gs.apply_mig_layout(0, ["2g.20gb", "2g.20gb", "3g.40gb"])
    assert used.uuid in [d.uuid for d in after]
    with pytest.raises(InvalidInputError, match="is in MIG mode"):
        gs.job_env("whole", [pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_SHARED, gpu_milli=500)])
    with pytest.raises(FailedPreconditionError, match="in use by job trainer"):
        await gs.set_mig_mode(0, False)
    gs.detach("trainer")
    await gs.set_mig_mode(0, False)
    assert not gs.inventory()[0].mig_enabled and gs.inventory()[0].mig_devices == ()


async def test_process_on_a_slice_protects_it_too(tmp_path: Path) -> None:
    import asyncio

    gs = await mig_sharing(tmp_path)
    devices = await gs.apply_mig_layout(2, ["1g.10gb"] * 7)
    with processes() as procs:
        p = procs.sim_use(100, {**gs.backend.job_env(), "CUDA_VISIBLE_DEVICES": devices[0].uuid})
        for _ in range(100):
            await gs.sample_once()
            if any(s.processes for s in gs.telemetry() if s.index == 2):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(FailedPreconditionError, match=f"pid {p.pid}"):
            await gs.apply_mig_layout(2, ["7g.80gb"])
