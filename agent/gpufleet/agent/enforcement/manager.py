"""GpuSharing: enforced GPU sharing on one agent (interfaces.md section 4).

Per GPU, one of four modes, taken from each job's ``DeviceAssignment.mode``:

- EXCLUSIVE: the job has the GPU; nothing to enforce.
- SHARED: fractions; the memory watchdog stops a job above its limit and the time-slicer gives each job
  turns in proportion to its share (only while 2+ jobs share the GPU, or the job is strict).
- MPS: fractions under an MPS control daemon (driver-enforced memory pinning and thread percentage); the
  watchdog still runs. Where MPS is unavailable (simulated GPUs, no control binary) it falls back to SHARED
  behaviour unless ``SharingConfig.mps == "on"``.
- MIG: the job sees its MIG device UUID; the hardware isolates it. Layouts change through
  :meth:`GpuSharing.apply_mig_layout`, which refuses to touch a slice a job uses.

``run()`` drives the sampler (adaptive interval), the watchdog and the time-slicer until cancelled; on
the way out every paused job is resumed and MPS daemons are told to quit.

The daemon must call :meth:`GpuSharing.detach` before it signals a job (a paused job would not see
SIGTERM until resumed; detach resumes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpufleet.agent.backends.base import GpuBackend, GpuDevice, GpuResetter, GpuSample, HealthEvent, MigDevice
from gpufleet.agent.enforcement.config import SharingConfig
from gpufleet.agent.enforcement.env import VisibleGpu, build_env
from gpufleet.agent.enforcement.memory import REASON as MEMORY_REASON
from gpufleet.agent.enforcement.memory import MemoryWatchdog, Violation
from gpufleet.agent.enforcement.mig import check_idle, check_layout_keeps
from gpufleet.agent.enforcement.mps import MpsDaemons, MpsDirs
from gpufleet.agent.enforcement.proctree import JobProcessIndex
from gpufleet.agent.enforcement.timeslice import GpuSlicer
from gpufleet.agent.enforcement.usage import JobUsage
from gpufleet.common.errors import (
    BackendError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    Problem,
    UnsupportedOperationError,
)
from gpufleet.common.gpu_models import MODELS, plan_layout
from gpufleet.proto.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

StopJob = Callable[[str, str, str], Awaitable[None]]
FRACTIONAL = (pb.SHARING_MODE_SHARED, pb.SHARING_MODE_MPS)
MODE_NAMES = {
    pb.SHARING_MODE_UNSPECIFIED: "exclusive",
    pb.SHARING_MODE_EXCLUSIVE: "exclusive",
    pb.SHARING_MODE_SHARED: "shared",
    pb.SHARING_MODE_MPS: "mps",
    pb.SHARING_MODE_MIG: "mig",
}


@dataclass(slots=True)
class _Job:
    job_id: str
    pgid: int
    devices: tuple[pb.DeviceAssignment, ...]
    strict: bool
    sliced_on: int | None = None
    mps_gpus: set[int] = field(default_factory=set)


class GpuSharing:
    """See the module docstring."""

    def __init__(
        self,
        backend: GpuBackend,
        state_dir: Path,
        config: SharingConfig,
        stop_job: StopJob,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.state_dir = state_dir
        self.config = config
        self._stop_job = stop_job
        self._clock = clock
        self._inventory = backend.inventory()
        self._samples: list[GpuSample] = []
        self._jobs: dict[str, _Job] = {}
        self._slicers: dict[int, GpuSlicer] = {}
        self._watchdog = MemoryWatchdog(config.memory_grace_s)
        self._procs = JobProcessIndex()
        self._mps = MpsDaemons(state_dir, config.mps_control_binary)
        self._actions: Counter[tuple[str, str]] = Counter()
        self._health: list[HealthEvent] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakers: list[asyncio.Future[None]] = []
        from gpufleet.agent.metrics import register_sharing

        register_sharing(self, registry)

    # ------------------------------------------------------------------ devices

    def _device(self, index: int, field_name: str = "gpu_index") -> GpuDevice:
        for g in self._inventory:
            if g.index == index:
                return g
        raise InvalidInputError(
            Problem(
                field_name, f"no GPU {index} on this node (GPUs: {', '.join(str(g.index) for g in self._inventory)})"
            )
        )

    def _uses_mps(self, d: pb.DeviceAssignment) -> bool:
        if not (d.mode == pb.SHARING_MODE_MPS or (d.mode == pb.SHARING_MODE_SHARED and self.config.mps_for_shared)):
            return False
        if self.config.mps == "off":
            return False
        gpu = self._device(d.gpu_index)
        ok = gpu.mps_available and not gpu.mig_enabled and self._mps.available()
        if not ok and self.config.mps == "on" and d.mode == pb.SHARING_MODE_MPS:
            raise FailedPreconditionError(
                f"GPU {d.gpu_index} cannot run MPS here (backend {self.backend.name}, "
                f"{self.config.mps_control_binary} {'found' if self._mps.available() else 'not on PATH'}); "
                "set sharing.mps=auto to fall back to time-slicing"
            )
        return ok

    def _visible(self, i: int, d: pb.DeviceAssignment) -> VisibleGpu:
        gpu = self._device(d.gpu_index, f"devices[{i}].gpu_index")
        if d.mode == pb.SHARING_MODE_MIG:
            mig = next((m for m in gpu.mig_devices if m.uuid == d.mig_device_uuid), None)
            if mig is None:
                have = ", ".join(f"{m.profile}={m.uuid}" for m in gpu.mig_devices) or "none"
                raise InvalidInputError(
                    Problem(
                        f"devices[{i}].mig_device_uuid",
                        f"no MIG device {d.mig_device_uuid!r} on GPU {d.gpu_index} (present: {have})",
                    )
                )
            return VisibleGpu(mig.uuid, mig.memory_mib, 0, 1000, False)
        if gpu.mig_enabled:
            raise InvalidInputError(
                Problem(f"devices[{i}].mode", f"GPU {d.gpu_index} is in MIG mode; assign one of its MIG devices")
            )
        if d.gpu_uuid and d.gpu_uuid != gpu.uuid:
            raise InvalidInputError(
                Problem(f"devices[{i}].gpu_uuid", f"GPU {d.gpu_index} is {gpu.uuid}, not {d.gpu_uuid}")
            )
        fractional = d.mode in FRACTIONAL
        share = d.gpu_milli if 0 < d.gpu_milli < 1000 else 1000
        limit = 0
        if fractional:
            limit = d.gpu_memory_mib or gpu.memory_mib * share // 1000
        return VisibleGpu(gpu.uuid, gpu.memory_mib, limit, share, fractional)

    # ------------------------------------------------------------------ jobs

    def job_env(self, job_id: str, devices: Sequence[pb.DeviceAssignment]) -> dict[str, str]:
        visible = [self._visible(i, d) for i, d in enumerate(devices)]
        mps: MpsDirs | None = None
        mps_devices = [d for d in devices if self._uses_mps(d)]
        if len(mps_devices) > 1:
            raise InvalidInputError(Problem("devices", f"job {job_id}: an MPS assignment covers exactly one GPU"))
        if mps_devices:
            gpu = self._device(mps_devices[0].gpu_index)
            mps = self._mps.ensure(gpu.index, gpu.uuid)
        env = build_env(visible, mps)
        env.update(self.backend.job_env())
        env["GPUFLEET_GPU_SHARING_MODE"] = ",".join(MODE_NAMES.get(d.mode, "exclusive") for d in devices)
        return env

    def attach(self, job_id: str, pgid: int, devices: Sequence[pb.DeviceAssignment], strict: bool) -> None:
        visible = [self._visible(i, d) for i, d in enumerate(devices)]
        # decide (and start MPS daemons) before recording anything, so a refused attach leaves no trace
        use_mps = [v.fractional and self._uses_mps(d) for d, v in zip(devices, visible, strict=True)]
        for d, m in zip(devices, use_mps, strict=True):
            if m:
                gpu = self._device(d.gpu_index)
                self._mps.ensure(gpu.index, gpu.uuid)
        if job_id in self._jobs:
            self.detach(job_id)
        job = _Job(job_id, pgid, tuple(devices), strict)
        self._jobs[job_id] = job
        # a job re-adopted after an agent crash may still be paused by the previous agent: resume it first
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGCONT)
        self._procs.add(job_id, pgid)
        for d, v, m in zip(devices, visible, use_mps, strict=True):
            if not v.fractional:
                continue
            self._watchdog.set_limit(job_id, d.gpu_index, v.limit_mib)
            if m:
                job.mps_gpus.add(d.gpu_index)
            elif job.sliced_on is None:
                slicer = self._slicers.get(d.gpu_index)
                if slicer is None:
                    c = self.config
                    slicer = GpuSlicer(d.gpu_index, c.quantum_ms, c.min_turn_ms, self._clock, c.slice_tick_ms)
                    self._slicers[d.gpu_index] = slicer
                slicer.add(job_id, pgid, v.share_milli, strict)
                job.sliced_on = d.gpu_index
        log.info("attached job %s (pgid %d) to %s", job_id, pgid, [MODE_NAMES.get(d.mode) for d in devices])
        self._wake()

    def detach(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        self._unslice(job)  # resumes it
        self._watchdog.clear(job_id)
        self._procs.remove(job_id)
        for g in job.mps_gpus:
            if not any(g in other.mps_gpus for other in self._jobs.values()):
                self._mps.stop(g, self._device(g).uuid)
        self._wake()

    def _unslice(self, job: _Job) -> None:
        """Take a job out of its GPU's slicer (resuming it); drop the slicer when it is empty."""
        if job.sliced_on is None:
            return
        slicer = self._slicers.get(job.sliced_on)
        if slicer is not None:
            slicer.remove(job.job_id)
            if not len(slicer):
                del self._slicers[job.sliced_on]
        job.sliced_on = None

    def job_usage(self, job_id: str) -> JobUsage | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        limits = self._watchdog.limits(job_id)
        used = sum(self._watchdog.usage.get(job_id, {}).values())
        targets = [d.gpu_milli if d.mode in FRACTIONAL and 0 < d.gpu_milli < 1000 else 1000 for d in job.devices]
        target = min(targets) if targets else 0
        achieved = 1000
        slicer = self._slicers.get(job.sliced_on) if job.sliced_on is not None else None
        if slicer is not None:
            a = slicer.achieved(job_id)
            achieved = 1000 if a is None else round(a * 1000)
        return JobUsage(
            job_id=job_id,
            used_mib=used,
            limit_mib=sum(limits.values()),
            util_pct=self._watchdog.util.get(job_id, -1 if not self._samples else 0),
            share_target_milli=target,
            share_achieved_milli=achieved,
            sliced=slicer is not None and slicer.active,
        )

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    # ------------------------------------------------------------------ telemetry

    def telemetry(self) -> list[GpuSample]:
        return list(self._samples)

    def inventory(self) -> list[GpuDevice]:
        return list(self._inventory)

    def enforcement_actions(self) -> dict[tuple[str, str], int]:
        """(action, reason) -> count since start."""
        return dict(self._actions)

    def drain_health_events(self) -> list[HealthEvent]:
        """Critical GPU events seen since the last call (for the daemon to report)."""
        events, self._health = self._health, []
        return events

    def sampling_interval_s(self) -> float:
        c = self.config
        return c.busy_sample_interval_s if self._jobs else c.idle_sample_interval_s

    async def sample_once(self) -> list[GpuSample]:
        """Take one sample, run the memory watchdog on it and collect health events."""
        samples = await asyncio.to_thread(self.backend.sample)
        events = self.backend.health_events()
        self._samples = samples
        if events:
            self._health.extend(events)
            self._inventory = self.backend.inventory()
            for e in events:
                log.warning("GPU %d unhealthy: %s", e.index, e.reason)
        for v in self._watchdog.observe(samples, self._procs, self._clock()):
            self._enforce(v)
        return samples

    def _enforce(self, v: Violation) -> None:
        job = self._jobs.get(v.job_id)
        if job is None:
            return
        self._unslice(job)  # resumed, so it can handle SIGTERM; neighbours keep their turns
        self._actions[("stop", MEMORY_REASON)] += 1
        log.warning("stopping job %s: %s", v.job_id, v.message)
        task = asyncio.get_running_loop().create_task(self._call_stop(v.job_id, MEMORY_REASON, v.message))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._stop_done, v.job_id))

    async def _call_stop(self, job_id: str, reason: str, message: str) -> None:
        await self._stop_job(job_id, reason, message)

    def _stop_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stop_job(%s) failed: %r; retrying at the next sample", job_id, task.exception())
            self._actions[("stop_failed", MEMORY_REASON)] += 1
            self._watchdog.rearm(job_id)

    # ------------------------------------------------------------------ MIG

    async def apply_mig_layout(self, gpu_index: int, profiles: Sequence[str]) -> list[MigDevice]:
        gpu = self._device(gpu_index)
        model = MODELS.get(gpu.model)
        if model is None or not model.mig_capable:
            raise UnsupportedOperationError(f"GPU {gpu_index} ({gpu.model}) is not MIG-capable")
        plan_layout(model, profiles)  # InvalidInputError for layouts that cannot exist on this model
        in_use = self._mig_in_use(gpu)
        check_layout_keeps(gpu, profiles, in_use)
        try:
            devices = await asyncio.to_thread(self.backend.apply_mig_layout, gpu_index, list(profiles), list(in_use))
        except InvalidInputError as e:
            if not in_use:
                raise
            users = ", ".join(f"{u} used by {who}" for u, who in in_use.items())
            raise FailedPreconditionError(f"GPU {gpu_index}: {e} (slices in use: {users})") from e
        self._inventory = self.backend.inventory()
        self._actions[("mig_layout", "APPLIED")] += 1
        return devices

    def _mig_in_use(self, gpu: GpuDevice) -> dict[str, str]:
        """MIG device uuid -> who uses it ("job <id>" or "pid <n>")."""
        out: dict[str, str] = {}
        for job in self._jobs.values():
            for d in job.devices:
                if d.gpu_index == gpu.index and d.mode == pb.SHARING_MODE_MIG and d.mig_device_uuid:
                    out[d.mig_device_uuid] = f"job {job.job_id}"
        for s in self._samples:
            if s.index == gpu.index:
                for p in s.processes:
                    if p.mig_uuid and p.mig_uuid not in out:
                        out[p.mig_uuid] = f"pid {p.pid}"
        return out

    async def set_mig_mode(self, gpu_index: int, enabled: bool) -> None:
        gpu = self._device(gpu_index)
        if not gpu.mig_capable:
            raise UnsupportedOperationError(f"GPU {gpu_index} ({gpu.model}) is not MIG-capable")
        jobs = [j.job_id for j in self._jobs.values() if any(d.gpu_index == gpu_index for d in j.devices)]
        pids = [p.pid for s in self._samples if s.index == gpu_index for p in s.processes]
        check_idle(gpu_index, jobs, pids)
        await asyncio.to_thread(self.backend.set_mig_mode, gpu_index, enabled)
        if isinstance(self.backend, GpuResetter):
            await asyncio.to_thread(self.backend.reset_gpu, gpu_index)
        self._inventory = self.backend.inventory()
        self._actions[("mig_mode", "ENABLED" if enabled else "DISABLED")] += 1

    # ------------------------------------------------------------------ loops

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fire_wakers)

    def _fire_wakers(self) -> None:
        wakers, self._wakers = self._wakers, []
        for f in wakers:
            if not f.done():
                f.set_result(None)

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep until the timeout or an attach/detach, whichever comes first (no task per wait)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wakers.append(fut)
        handle = loop.call_later(seconds, _resolve, fut) if seconds is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()

    async def _sample_loop(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.sample_once()
            except BackendError as e:  # a failed sample must not stop enforcement; the next one retries
                self._actions[("sample_failed", type(e).__name__)] += 1
                log.warning("GPU sample failed: %s", e)
            await self._sleep(max(0.0, self.sampling_interval_s() - (self._clock() - started)))

    async def _slice_loop(self) -> None:
        slack = 0.001  # step every slicer due within 1 ms in the same wake-up
        while True:
            now = self._clock()
            deadlines = []
            for s in list(self._slicers.values()):
                if s.active:
                    if s.deadline <= now + slack:
                        s.step(now)
                    deadlines.append(s.deadline)
            await self._sleep(max(0.0, min(deadlines) - self._clock()) if deadlines else None)

    async def run(self) -> None:
        """Sampler + memory watchdog + time-slicer until cancelled; then resume everything, stop MPS."""
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sample_loop(), name="gpu-sampler")
                tg.create_task(self._slice_loop(), name="gpu-slicer")
        finally:
            self.close()

    def close(self) -> None:
        """Resume every paused job and stop MPS daemons (safe to call more than once)."""
        for s in self._slicers.values():
            s.close()
        self._slicers.clear()
        for job in self._jobs.values():
            job.sliced_on = None
        self._mps.stop_all({g.index: g.uuid for g in self._inventory})
        self._loop = None

    def get_job(self, job_id: str) -> tuple[int, tuple[pb.DeviceAssignment, ...]]:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} is not attached")
        return job.pgid, job.devices


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
