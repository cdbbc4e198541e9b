"""MPS: one control daemon per GPU (a fake nvidia-cuda-mps-control on PATH) and the env jobs get."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.nvml import NvmlBackend
from gpufleet.agent.backends.nvml.fake_driver import FakeNvmlDriver
from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.common.errors import FailedPreconditionError
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import load_recording

FAKE_MPS = """#!/bin/sh
# fake MPS control: -d starts (marks the pipe dir), "quit" on stdin stops
if [ "$1" = "-d" ]; then echo "$CUDA_VISIBLE_DEVICES" > "$CUDA_MPS_PIPE_DIRECTORY/running"; exit 0; fi
read cmd
[ "$cmd" = "quit" ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/running"
exit 0
"""


async def _noop(job_id: str, reason: str, message: str) -> None:
    return None


@pytest.fixture
def fake_mps_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-cuda-mps-control"
    exe.write_text(FAKE_MPS)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def mps_dev(gs: GpuSharing, gpu: int, milli: int, mib: int) -> pb.DeviceAssignment:
    return pb.DeviceAssignment(
        gpu_index=gpu, gpu_uuid=gs.inventory()[gpu].uuid, mode=pb.SHARING_MODE_MPS, gpu_milli=milli, gpu_memory_mib=mib
    )


def test_mps_daemon_per_gpu_and_job_env(tmp_path: Path, fake_mps_path: Path) -> None:
    backend = NvmlBackend(FakeNvmlDriver(load_recording()), node_name="dgx")
    gs = GpuSharing(backend, tmp_path, SharingConfig(), _noop, registry=CollectorRegistry())
    assert gs.inventory()[1].mps_available and not gs.inventory()[7].mps_available  # GPU 7 is in MIG mode
    d1 = mps_dev(gs, 1, 250, 10240)
    env = gs.job_env("a", [d1])
    pipe = tmp_path / "mps" / "1" / "pipe"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)
    assert env["CUDA_MPS_LOG_DIRECTORY"] == str(tmp_path / "mps" / "1" / "log")
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=10240M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env["CUDA_VISIBLE_DEVICES"] == gs.inventory()[1].uuid
    assert env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] == "10240"
    assert (pipe / "running").read_text().strip() == gs.inventory()[1].uuid  # daemon sees only its GPU
    gs.attach("a", 999998, [d1], strict=False)
    gs.attach("b", 999997, [mps_dev(gs, 1, 500, 20000)], strict=False)
    u = gs.job_usage("a")
    assert u is not None and not u.sliced  # MPS jobs run concurrently, not in turns
    gs.detach("a")
    assert (pipe / "running").exists()  # b still uses it
    gs.detach("b")
    assert not (pipe / "running").exists()
    gs.close()


def test_mps_falls_back_to_time_slicing_on_simulated_gpus(tmp_path: Path, fake_mps_path: Path) -> None:
    backend = create_backend("simulate:H100-80GB:1", tmp_path, node_name="n1")
    gs = GpuSharing(backend, tmp_path, SharingConfig(), _noop, registry=CollectorRegistry())
    env = gs.job_env("a", [mps_dev(gs, 0, 500, 4096)])
    assert "CUDA_MPS_PIPE_DIRECTORY" not in env
    assert env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] == "4096"
    strict = GpuSharing(backend, tmp_path, SharingConfig(mps="on"), _noop, registry=CollectorRegistry())
    with pytest.raises(FailedPreconditionError, match="cannot run MPS"):
        strict.job_env("a", [mps_dev(gs, 0, 500, 4096)])


def test_framework_memory_env_forms(tmp_path: Path) -> None:
    backend = create_backend("simulate:A100-80GB:1", tmp_path, node_name="n1")
    gs = GpuSharing(backend, tmp_path, SharingConfig(), _noop, registry=CollectorRegistry())
    d = pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_SHARED, gpu_milli=500, gpu_memory_mib=20480)
    env = gs.job_env("a", [d])
    assert env["GPUFLEET_GPU_MEMORY_FRACTION"] == "0.2500"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.2500"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["GPUFLEET_GPU_SHARE_MILLI"] == "500"
    assert env["GPUFLEET_SIM_DIR"] == str(backend.job_env()["GPUFLEET_SIM_DIR"])
    assert env["GPUFLEET_GPU_SHARING_MODE"] == "shared"
