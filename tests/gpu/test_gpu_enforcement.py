"""GpuSharing on a real GPU: a PyTorch job over its memory limit is stopped; MPS pins memory inside the job;
two matmul loops sharing the GPU get their shares. No coordinator: GpuSharing + real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.proto.v1 import types_pb2 as pb
from tests.gpu.jobs import ALLOCATE, MATMUL_LOOP

GIB_MIB = 1024


def _spawn(python: str, code: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            [python, "-c", code, *args],
            env={**os.environ, **env},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(p: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)


def _sharing(state_dir: Path, stop: object, **cfg: object) -> GpuSharing:
    backend = create_backend("nvml", state_dir, node_name="gpu-test")
    config = SharingConfig(**cfg)  # type: ignore[arg-type]
    return GpuSharing(backend, state_dir, config, stop, registry=CollectorRegistry())  # type: ignore[arg-type]


def _shared(gs: GpuSharing, milli: int, mib: int, mode: int = pb.SHARING_MODE_SHARED) -> pb.DeviceAssignment:
    gpu = next(g for g in gs.inventory() if not g.mig_enabled)
    return pb.DeviceAssignment(gpu_index=gpu.index, gpu_uuid=gpu.uuid, mode=mode, gpu_milli=milli, gpu_memory_mib=mib)  # type: ignore[arg-type]


def test_pytorch_job_over_10gib_limit_is_stopped(state_dir: Path, torch_python: str, tmp_path: Path) -> None:
    stops: list[tuple[str, str, str]] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}

    async def stop_job(job_id: str, reason: str, message: str) -> None:
        stops.append((job_id, reason, message))
        gs.detach(job_id)
        os.killpg(procs[job_id].pid, signal.SIGTERM)

    gs = _sharing(state_dir, stop_job, busy_sample_interval_s=0.25, memory_grace_s=0.5)
    dev = _shared(gs, 500, 10 * GIB_MIB)

    async def scenario() -> None:
        env = gs.job_env("greedy", [dev])
        assert env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] == "10240"
        procs["greedy"] = _spawn(torch_python, ALLOCATE, ["20"], env, tmp_path / "greedy.log")
        gs.attach("greedy", procs["greedy"].pid, [dev], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            deadline = time.monotonic() + 90
            while not stops and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(scenario())
        log = (tmp_path / "greedy.log").read_text()
        assert [(j, r) for j, r, _ in stops] == [("greedy", "GPU_MEMORY_LIMIT_EXCEEDED")], log
        assert "allowed 10737418240 bytes" in stops[0][2]
        assert procs["greedy"].wait(timeout=30) != 0
    finally:
        for p in procs.values():
            _kill(p)
        gs.close()


def test_mps_pinned_limit_fails_allocations_inside_the_job(
    state_dir: Path, torch_python: str, mps_binary: str, tmp_path: Path
) -> None:
    async def stop_job(job_id: str, reason: str, message: str) -> None:
        return None

    gs = _sharing(state_dir, stop_job, mps="on")
    dev = _shared(gs, 250, 4 * GIB_MIB, mode=pb.SHARING_MODE_MPS)
    procs = []
    try:
        env = gs.job_env("mps-job", [dev])
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4096M"
        small = _spawn(torch_python, ALLOCATE, ["1", "0"], env, tmp_path / "small.log")
        big = _spawn(torch_python, ALLOCATE, ["8", "0"], env, tmp_path / "big.log")
        procs += [small, big]
        gs.attach("mps-job", small.pid, [dev], strict=False)
        rc_small, rc_big = small.wait(timeout=180), big.wait(timeout=180)
        small_log, big_log = (tmp_path / "small.log").read_text(), (tmp_path / "big.log").read_text()
        assert rc_small == 0 and "ALLOCATED" in small_log, small_log
        assert rc_big in (3, 4) and "ALLOCATED" not in big_log, big_log
    finally:
        for p in procs:
            _kill(p)
        gs.detach("mps-job")
        gs.close()
    # the control daemon of our pipe directory has quit
    pipe = str(state_dir / "mps" / str(dev.gpu_index) / "pipe")
    deadline = time.monotonic() + 10
    while _mps_daemons(pipe) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _mps_daemons(pipe)
    assert "Exit with status 0" in (state_dir / "mps" / str(dev.gpu_index) / "log" / "control.log").read_text()


def _mps_daemons(pipe: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] == "nvidia-cuda-mps-control" and p.environ().get("CUDA_MPS_PIPE_DIRECTORY") == pipe:
                out.append(p.pid)
    return out


def test_two_matmul_loops_get_their_shares(state_dir: Path, torch_python: str, tmp_path: Path) -> None:
    async def stop_job(job_id: str, reason: str, message: str) -> None:
        return None

    gs = _sharing(state_dir, stop_job, quantum_ms=100)
    shares = {"a": 250, "b": 750}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def count(job: str) -> int:
        try:
            return int((tmp_path / f"{job}.count").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    async def scenario() -> dict[str, int]:
        for job, milli in shares.items():
            dev = _shared(gs, milli, 8 * GIB_MIB)
            env = gs.job_env(job, [dev])
            procs[job] = _spawn(
                torch_python, MATMUL_LOOP, [str(tmp_path / f"{job}.count")], env, tmp_path / f"{job}.log"
            )
        # warm up alone (CUDA init), then share
        deadline = time.monotonic() + 120
        while min(count(j) for j in shares) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for job, milli in shares.items():
            gs.attach(job, procs[job].pid, [_shared(gs, milli, 8 * GIB_MIB)], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            await asyncio.sleep(1.0)
            start = {j: count(j) for j in shares}
            await asyncio.sleep(6.0)
            return {j: count(j) - start[j] for j in shares}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        done = asyncio.run(scenario())
        share_a = done["a"] / (done["a"] + done["b"])
        print(f"matmul iterations with shares 250/750: {done}; a got {share_a:.3f} of the iterations")
        assert abs(share_a - 0.25) <= 0.05, f"iterations {done}: a got {share_a:.3f}"
    finally:
        for p in procs.values():
            _kill(p)
        gs.close()
