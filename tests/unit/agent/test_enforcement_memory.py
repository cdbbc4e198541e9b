"""The GPU memory watchdog through GpuSharing on simulated GPUs, with real processes declaring memory."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import processes

MIB = 1024 * 1024


class Stops:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, job_id: str, reason: str, message: str) -> None:
        self.calls.append((job_id, reason, message))


def sharing(tmp_path: Path, **cfg: float) -> tuple[GpuSharing, Stops]:
    backend = create_backend("simulate:H100-80GB:2", tmp_path, node_name="n1")
    stops = Stops()
    config = SharingConfig(**{"busy_sample_interval_s": 0.1, "memory_grace_s": 0.0, **cfg})  # type: ignore[arg-type]
    return GpuSharing(backend, tmp_path, config, stops, registry=CollectorRegistry()), stops


def shared(gs: GpuSharing, milli: int, mib: int = 0, gpu: int = 0) -> pb.DeviceAssignment:
    return pb.DeviceAssignment(
        gpu_index=gpu,
        gpu_uuid=gs.inventory()[gpu].uuid,
        mode=pb.SHARING_MODE_SHARED,
        gpu_milli=milli,
        gpu_memory_mib=mib,
    )


async def sample_until(gs: GpuSharing, pred: object, timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await gs.sample_once()
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


async def test_job_over_its_limit_is_stopped_with_bytes_in_the_message(tmp_path: Path) -> None:
    gs, stops = sharing(tmp_path)
    with processes() as procs:
        dev = shared(gs, 500, 4096)
        greedy = procs.sim_use(6000, gs.job_env("greedy", [dev]))
        fine = procs.sim_use(3000, gs.job_env("fine", [dev]))
        gs.attach("greedy", greedy.pid, [dev], strict=False)
        gs.attach("fine", fine.pid, [dev], strict=False)
        await sample_until(gs, lambda: stops.calls and (gs.job_usage("fine") or object()).__getattribute__("used_mib"))
        await asyncio.sleep(0)
        assert [(j, r) for j, r, _ in stops.calls] == [("greedy", "GPU_MEMORY_LIMIT_EXCEEDED")]
        msg = stops.calls[0][2]
        assert str(6000 * MIB) in msg and str(4096 * MIB) in msg
        usage = gs.job_usage("fine")
        assert usage is not None and usage.used_mib == 3000 and usage.limit_mib == 4096
        assert gs.enforcement_actions() == {("stop", "GPU_MEMORY_LIMIT_EXCEEDED"): 1}
        # reported once, even though it stays over its limit until the daemon stops it
        await gs.sample_once()
        await asyncio.sleep(0)
        assert len(stops.calls) == 1
        gs.close()


async def test_grace_period_tolerates_a_short_spike(tmp_path: Path) -> None:
    gs, stops = sharing(tmp_path, memory_grace_s=30.0)
    with processes() as procs:
        dev = shared(gs, 500, 1024)
        p = procs.sim_use(2048, gs.job_env("spiky", [dev]))
        gs.attach("spiky", p.pid, [dev], strict=False)
        await sample_until(gs, lambda: (gs.job_usage("spiky") or object()).__getattribute__("used_mib") == 2048)
        await gs.sample_once()
        assert stops.calls == []
        gs.close()


async def test_limit_defaults_to_the_share_of_device_memory(tmp_path: Path) -> None:
    gs, _ = sharing(tmp_path)
    env = gs.job_env("j", [shared(gs, 250)])
    assert env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] == str(81559 * 250 // 1000)


async def test_memory_of_children_in_other_process_groups_counts_for_the_job(tmp_path: Path) -> None:
    gs, stops = sharing(tmp_path)
    with processes() as procs:
        dev = shared(gs, 500, 1000)
        env = gs.job_env("tree", [dev])
        # the job's leader starts a child in a new session (like some launchers); the child declares the memory
        code = (
            "import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-m', 'gpufleet.agent.backends.simulated.use', '--mib', '1500',"
            " '--seconds', '30'], start_new_session=True)\n"
            "time.sleep(30)\n"
        )
        leader = procs.spawn([sys.executable, "-c", code], env)
        gs.attach("tree", leader.pid, [dev], strict=False)
        await sample_until(gs, lambda: stops.calls)
        await asyncio.sleep(0)
        assert [c[0] for c in stops.calls] == ["tree"]
        gs.close()
        import psutil

        for child in psutil.Process(leader.pid).children(recursive=True):
            child.kill()


async def test_mig_and_exclusive_jobs_have_no_watchdog_limit(tmp_path: Path) -> None:
    gs, stops = sharing(tmp_path)
    with processes() as procs:
        dev = pb.DeviceAssignment(gpu_index=1, mode=pb.SHARING_MODE_EXCLUSIVE, gpu_milli=1000)
        env = gs.job_env("whole", [dev])
        assert "GPUFLEET_GPU_MEMORY_LIMIT_MIB" not in env
        assert env["CUDA_VISIBLE_DEVICES"] == gs.inventory()[1].uuid
        p = procs.sim_use(70000, env)
        gs.attach("whole", p.pid, [dev], strict=False)
        await sample_until(gs, lambda: (gs.job_usage("whole") or object()).__getattribute__("used_mib") > 0)
        assert stops.calls == []
        u = gs.job_usage("whole")
        assert u is not None and u.limit_mib == 0 and u.share_achieved_milli == 1000
        gs.close()


def test_bad_assignment_is_refused_with_field_names(tmp_path: Path) -> None:
    from gpufleet.common.errors import InvalidInputError

    gs, _ = sharing(tmp_path)
    with pytest.raises(InvalidInputError, match=r"devices\[0\].gpu_index"):
        gs.job_env("j", [pb.DeviceAssignment(gpu_index=9, mode=pb.SHARING_MODE_SHARED, gpu_milli=100)])
    with pytest.raises(InvalidInputError, match=r"devices\[0\].gpu_uuid"):
        gs.attach("j", 1, [pb.DeviceAssignment(gpu_index=0, gpu_uuid="GPU-nope", mode=pb.SHARING_MODE_SHARED)], False)
    with pytest.raises(InvalidInputError, match="mig_device_uuid"):
        gs.job_env("j", [pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_MIG, mig_device_uuid="MIG-x")])
    assert gs.job_ids() == []


def test_config_errors_name_the_field() -> None:
    from gpufleet.common.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"sharing\.quantum_ms"):
        SharingConfig(quantum_ms=0)
    with pytest.raises(InvalidInputError, match=r"sharing\.mps"):
        SharingConfig(mps="sometimes")  # type: ignore[arg-type]


async def test_a_failed_sample_does_not_stop_the_loops(tmp_path: Path) -> None:
    from gpufleet.agent.backends.nvml import NvmlBackend
    from gpufleet.agent.backends.nvml.fake_driver import FakeNvmlDriver
    from tests.unit.agent.fixtures.procs import load_recording

    driver = FakeNvmlDriver(load_recording())
    backend = NvmlBackend(driver, node_name="dgx")
    gs = GpuSharing(
        backend, tmp_path, SharingConfig(busy_sample_interval_s=0.05), Stops(), registry=CollectorRegistry()
    )
    gs.attach("j", 999999, [pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_EXCLUSIVE)], strict=False)
    driver.fail_next["memory_info"] = 999  # an unknown NVML error on the next sample
    task = asyncio.create_task(gs.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if gs.telemetry():
                break
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gs.enforcement_actions().get(("sample_failed", "BackendError")) == 1
    assert len(gs.telemetry()) == 8  # the next sample worked


async def test_a_failed_stop_is_retried(tmp_path: Path) -> None:
    attempts: list[str] = []

    async def flaky_stop(job_id: str, reason: str, message: str) -> None:
        attempts.append(job_id)
        if len(attempts) == 1:
            raise RuntimeError("daemon could not signal the job")

    backend = create_backend("simulate:H100-80GB:1", tmp_path, node_name="n1")
    gs = GpuSharing(backend, tmp_path, SharingConfig(memory_grace_s=0), flaky_stop, registry=CollectorRegistry())
    with processes() as procs:
        dev = shared(gs, 500, 100)
        p = procs.sim_use(500, gs.job_env("j", [dev]))
        gs.attach("j", p.pid, [dev], strict=False)
        await sample_until(gs, lambda: len(attempts) >= 2)
        await asyncio.sleep(0)
    assert attempts == ["j", "j"]
    assert gs.enforcement_actions()[("stop_failed", "GPU_MEMORY_LIMIT_EXCEEDED")] == 1
