"""Agent GPU-sharing overhead and time-slicer accuracy.

    .venv/bin/python bench/agent.py [--seconds 20] [--accuracy-seconds 4]

1. Overhead: this process runs GpuSharing's loops (sampler + memory watchdog at the busy sampling rate, and
   the time-slicer) over 8 simulated H100s with 16 running (sleeping) job processes that declare GPU memory,
   and reports its own CPU (percent of one core) and resident memory. Rows: a baseline with no jobs
   attached (idle sampling), 16 exclusive jobs (sampler + watchdog only), and 16 jobs sharing 2 per GPU
   (time-slicer active on all 8 GPUs). Targets: < 1 % of one core and < 60 MB resident (the DCGM exporter
   alone is reported at 135-155 MiB).
2. Accuracy: two CPU-bound processes time-sliced with the given shares; each one's share of their summed CPU
   time against its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.backends.simulated import write_use
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.proto.v1 import types_pb2 as pb

CPU_TARGET_PCT = 1.0
RSS_TARGET_MB = 60.0
BURN = "while True:\n    pass\n"


async def _noop(job_id: str, reason: str, message: str) -> None:  # noqa: ARG001
    return None


def _spawn(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), start_new_session=True)


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        p.wait()


async def overhead(
    mode: str, seconds: float, state: Path, quantum_ms: int, spec: str
) -> tuple[float, float, float, int]:
    """(CPU % of one core, RSS MB, USS MB, slicer switches) of this process while GpuSharing runs."""
    backend = create_backend(spec, state, node_name="bench")
    n_gpus = len(backend.inventory())
    config = SharingConfig(quantum_ms=quantum_ms)
    gs = GpuSharing(backend, state, config, _noop)
    sim_dir = Path(backend.job_env().get("GPUFLEET_SIM_DIR", state / "unused-sim"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if mode != "idle":
            for j in range(16):
                gpu = j % n_gpus
                p = _spawn(["sleep", "600"])
                procs.append(p)
                write_use(sim_dir, p.pid, str(gpu), 4096, busy=False)
                if mode.startswith("shared"):
                    dev = pb.DeviceAssignment(
                        gpu_index=gpu, mode=pb.SHARING_MODE_SHARED, gpu_milli=500, gpu_memory_mib=40000
                    )
                else:
                    dev = pb.DeviceAssignment(gpu_index=gpu, mode=pb.SHARING_MODE_EXCLUSIVE, gpu_milli=1000)
                gs.job_env(f"job-{j}", [dev])
                gs.attach(f"job-{j}", p.pid, [dev], strict=False)
        task = asyncio.create_task(gs.run())
        await asyncio.sleep(1.0)  # settle
        me = psutil.Process()
        c0, t0 = me.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        c1, t1 = me.cpu_times(), time.monotonic()
        switches = sum(s.switches for s in gs._slicers.values())
        mem = me.memory_full_info()
        rss_mb, uss_mb = mem.rss / 1e6, mem.uss / 1e6
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
        return cpu, rss_mb, uss_mb, switches
    finally:
        _kill(procs)
        gs.close()


async def accuracy(shares: tuple[int, int], seconds: float, state: Path) -> tuple[float, float]:
    backend = create_backend("simulate:L4:1", state, node_name="bench-acc")
    gs = GpuSharing(backend, state, SharingConfig(quantum_ms=50), _noop)
    procs = [_spawn([sys.executable, "-c", BURN]) for _ in shares]
    try:
        for i, (p, milli) in enumerate(zip(procs, shares, strict=True)):
            gs.attach(
                f"j{i}", p.pid, [pb.DeviceAssignment(gpu_index=0, mode=pb.SHARING_MODE_SHARED, gpu_milli=milli)], False
            )
        task = asyncio.create_task(gs.run())
        await asyncio.sleep(0.5)

        def cpu(p: subprocess.Popen[bytes]) -> float:
            t = psutil.Process(p.pid).cpu_times()
            return float(t.user + t.system)

        start = [cpu(p) for p in procs]
        await asyncio.sleep(seconds)
        used = [cpu(p) - s for p, s in zip(procs, start, strict=True)]
        achieved = (gs.job_usage("j0").share_achieved_milli if gs.job_usage("j0") else 0) / 1000  # type: ignore[union-attr]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return used[0] / max(1e-9, sum(used)), achieved
    finally:
        _kill(procs)
        gs.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window of the shared scenario")
    ap.add_argument("--accuracy-seconds", type=float, default=4.0)
    ap.add_argument("--backend", default="simulate:H100-80GB:8", help="GPU backend spec (e.g. nvml on a GPU host)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        default_q = SharingConfig().quantum_ms
        scenarios = [
            ("no jobs (idle sampling)", "idle", args.seconds / 4, default_q),
            ("16 exclusive jobs", "exclusive", args.seconds / 2, default_q),
            (f"16 sliced, quantum {default_q} ms", "shared", args.seconds, default_q),
            ("16 sliced, quantum 100 ms", "shared-100", args.seconds / 2, 100),
        ]
        rows = []
        for name, mode, secs, q in scenarios:
            cpu, rss, uss, switches = await overhead(mode, secs, Path(tmp) / mode, q, args.backend)
            rows.append((name, secs, max(0.0, cpu), rss, uss, switches))
        base_cpu = max(rows[1][2], 0.01)  # sampler + watchdog only
        print(
            f"\nAgent overhead: backend {args.backend}, 16 sleeping jobs (spread over the GPUs), busy sampling every "
            f"{SharingConfig().busy_sample_interval_s:g}s"
        )
        print(
            f"{'scenario':<30}{'window s':>9}{'CPU % core':>12}{'vs excl.':>9}{'vs 1% target':>14}"
            f"{'RSS MB':>9}{'vs 60MB':>9}{'USS MB':>8}{'switches/s':>12}"
        )
        for name, secs, cpu, rss, uss, switches in rows:
            print(
                f"{name:<30}{secs:>9.0f}{cpu:>12.3f}{cpu / base_cpu:>8.1f}x{cpu / CPU_TARGET_PCT:>13.2f}x"
                f"{rss:>9.1f}{rss / RSS_TARGET_MB:>8.2f}x{uss:>8.1f}{switches / secs:>12.1f}"
            )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
        print(f"peak RSS of this process: {peak:.1f} MB (DCGM exporter alone: 135-155 MiB)")
        print("USS = memory private to this process; RSS also counts shared library pages (grpc, libnvidia-ml)")

        print("\nTime-slicer accuracy: two CPU-bound processes, share of their summed CPU time")
        print(f"{'shares':<12}{'target':>8}{'measured':>10}{'error pts':>11}{'achieved (slicer)':>19}")
        for shares in ((250, 750), (500, 500), (100, 900)):
            measured, achieved = await accuracy(shares, args.accuracy_seconds, Path(tmp) / f"acc{shares[0]}")
            target = shares[0] / sum(shares)
            print(
                f"{shares[0]}/{shares[1]:<8}{target:>8.3f}{measured:>10.3f}{(measured - target) * 100:>+11.1f}"
                f"{achieved:>19.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
