"""Weighted time-slicing: real CPU-bound processes get CPU time in proportion to their GPU shares."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.agent.enforcement.timeslice import GpuSlicer
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.agent.fixtures.procs import cpu_seconds, processes


async def _noop(job_id: str, reason: str, message: str) -> None:
    return None


def sharing(tmp_path: Path, quantum_ms: int = 50) -> GpuSharing:
    backend = create_backend("simulate:L4:2", tmp_path, node_name="n1")
    cfg = SharingConfig(quantum_ms=quantum_ms, busy_sample_interval_s=0.5)
    return GpuSharing(backend, tmp_path, cfg, _noop, registry=CollectorRegistry())


def dev(milli: int, gpu: int = 0) -> pb.DeviceAssignment:
    return pb.DeviceAssignment(gpu_index=gpu, mode=pb.SHARING_MODE_SHARED, gpu_milli=milli)


def stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


async def test_two_busy_jobs_get_25_and_75_percent(tmp_path: Path) -> None:
    gs = sharing(tmp_path)
    with processes() as procs:
        a, b = procs.burner(), procs.burner()
        gs.attach("a", a.pid, [dev(250)], strict=False)
        gs.attach("b", b.pid, [dev(750)], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            await asyncio.sleep(0.5)  # let both start and settle
            ca0, cb0 = cpu_seconds(a.pid), cpu_seconds(b.pid)
            await asyncio.sleep(4.0)
            ca, cb = cpu_seconds(a.pid) - ca0, cpu_seconds(b.pid) - cb0
            ua, ub = gs.job_usage("a"), gs.job_usage("b")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        share_a = ca / (ca + cb)
        assert abs(share_a - 0.25) <= 0.05, f"a got {share_a:.3f} of the CPU time (cpu a={ca:.2f}s b={cb:.2f}s)"
        assert ua is not None and ub is not None and ua.sliced
        assert abs(ua.share_achieved_milli - 250) <= 50 and abs(ub.share_achieved_milli - 750) <= 50
        # cancelling run() resumed everybody
        assert not stopped(a.pid) and not stopped(b.pid)


async def test_a_job_alone_runs_unthrottled_unless_strict(tmp_path: Path) -> None:
    gs = sharing(tmp_path)
    with processes() as procs:
        solo, strict = procs.burner(), procs.burner()
        gs.attach("solo", solo.pid, [dev(300, gpu=0)], strict=False)
        gs.attach("strict", strict.pid, [dev(500, gpu=1)], strict=True)
        task = asyncio.create_task(gs.run())
        try:
            seen_stopped = {"solo": False, "strict": False}
            for _ in range(40):
                await asyncio.sleep(0.03)
                seen_stopped["solo"] |= stopped(solo.pid)
                seen_stopped["strict"] |= stopped(strict.pid)
            u_solo, u_strict = gs.job_usage("solo"), gs.job_usage("strict")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert seen_stopped == {"solo": False, "strict": True}
        assert u_solo is not None and not u_solo.sliced and u_solo.share_achieved_milli == 1000
        assert u_strict is not None and u_strict.sliced and abs(u_strict.share_achieved_milli - 500) <= 100
        assert not stopped(strict.pid)


async def test_detach_resumes_a_paused_job_and_the_neighbour_runs_alone(tmp_path: Path) -> None:
    gs = sharing(tmp_path, quantum_ms=200)
    with processes() as procs:
        a, b = procs.burner(), procs.burner()
        gs.attach("a", a.pid, [dev(500)], strict=False)
        gs.attach("b", b.pid, [dev(500)], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if stopped(a.pid):
                    break
            assert stopped(a.pid)
            gs.detach("a")
            assert not stopped(a.pid)
            await asyncio.sleep(0.5)
            assert not stopped(b.pid)
            u = gs.job_usage("b")
            assert u is not None and not u.sliced
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_turns_follow_shares_with_a_fake_clock(tmp_path: Path) -> None:
    now = [100.0]
    slicer = GpuSlicer(0, quantum_ms=100, min_turn_ms=10, clock=lambda: now[0])
    with processes() as procs:
        a, b = procs.spawn(["sleep", "30"]), procs.spawn(["sleep", "30"])
        slicer.add("a", a.pid, 250, strict=False)
        slicer.add("b", b.pid, 750, strict=False)
        turns: dict[str, float] = {"a": 0.0, "b": 0.0}
        for _ in range(50):
            end = slicer.step(now[0])
            who = slicer.current or ""
            turns[who] += end - now[0]
            now[0] = end
        assert abs(turns["a"] / (turns["a"] + turns["b"]) - 0.25) < 0.01
        assert abs((slicer.achieved("a") or 0) - 0.25) < 0.01
        slicer.close()
        assert not stopped(a.pid) and not stopped(b.pid)


def test_strict_jobs_leave_unallocated_share_idle(tmp_path: Path) -> None:
    now = [0.0]
    slicer = GpuSlicer(0, quantum_ms=100, min_turn_ms=10, clock=lambda: now[0])
    with processes() as procs:
        a = procs.spawn(["sleep", "30"])
        slicer.add("a", a.pid, 200, strict=True)
        for _ in range(40):
            now[0] = slicer.step(now[0])
        assert abs((slicer.achieved("a") or 0) - 0.2) < 0.02
        slicer.remove("a")
        assert not stopped(a.pid)


def test_attach_resumes_a_job_left_paused_by_a_crashed_agent(tmp_path: Path) -> None:
    import os
    import signal

    from tests.unit.agent.fixtures.procs import wait_for

    gs = sharing(tmp_path)
    with processes() as procs:
        p = procs.spawn(["sleep", "30"])
        os.killpg(p.pid, signal.SIGSTOP)
        assert wait_for(lambda: stopped(p.pid))
        gs.attach("adopted", p.pid, [dev(400)], strict=False)  # alone on its GPU: must run
        assert wait_for(lambda: not stopped(p.pid))
        gs.close()


async def test_jobs_that_exit_while_sliced_are_dropped_and_detach_in_any_order(tmp_path: Path) -> None:
    gs = sharing(tmp_path)
    with processes() as procs:
        a, b = procs.spawn(["sleep", "30"]), procs.spawn(["sleep", "30"])
        gs.attach("a", a.pid, [dev(500)], strict=False)
        gs.attach("b", b.pid, [dev(500)], strict=False)
        task = asyncio.create_task(gs.run())
        try:
            await asyncio.sleep(0.3)
            a.kill()
            a.wait()
            await asyncio.sleep(0.8)  # the slicer notices at a switch and drops it
            gs.detach("b")
            gs.detach("a")
            assert gs.job_ids() == []
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
