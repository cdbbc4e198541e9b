"""JobManager: the agent's jobs, reconciled against the coordinator's DesiredState (level-triggered).

- ``recover()`` at agent start: loads every record from the state directory and re-adopts running jobs
  (pid + start time must match), collects exit codes of jobs that ended while the agent was down, and marks
  jobs that vanished without an exit status LOST_ON_NODE.
- ``reconcile(desired)``: starts every desired (job, attempt) this node never started, stops every running
  job that is no longer desired (SIGTERM, grace, SIGKILL of the group) and forgets acknowledged exits.
- ``check()``: collects exits of running jobs; finished jobs are reported (``local_jobs``) until the
  coordinator acknowledges them.

GPU sharing plugs in through :class:`JobSharing` (GpuSharing implements it): it provides the device part of
each job's environment and is told about each job's process group (attach/detach).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from gpufleet.agent.jobs import env as job_env
from gpufleet.agent.jobs.logs import read_log
from gpufleet.agent.jobs.runner import LOG_FILE, JobRunner
from gpufleet.agent.local_state import (
    EXITED,
    FAILED_TO_START,
    RUNNING,
    STARTING,
    STOPPING,
    JobRecord,
    LocalState,
)
from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import GpuFleetError, InvalidInputError
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger("gpufleet.agent.jobs")

_STATE_PB = {
    STARTING: apb.LOCAL_JOB_STATE_STARTING,
    RUNNING: apb.LOCAL_JOB_STATE_RUNNING,
    STOPPING: apb.LOCAL_JOB_STATE_STOPPING,
    EXITED: apb.LOCAL_JOB_STATE_EXITED,
    FAILED_TO_START: apb.LOCAL_JOB_STATE_FAILED_TO_START,
}


class JobUsageView(Protocol):
    @property
    def used_mib(self) -> int: ...
    @property
    def limit_mib(self) -> int: ...
    @property
    def util_pct(self) -> int: ...
    @property
    def share_target_milli(self) -> int: ...
    @property
    def share_achieved_milli(self) -> int: ...


class JobSharing(Protocol):
    """What the job manager needs from GPU sharing (``gpufleet.agent.enforcement.GpuSharing``)."""

    def job_env(self, job_id: str, devices: Sequence[pb.DeviceAssignment]) -> dict[str, str]: ...
    def attach(self, job_id: str, pgid: int, devices: Sequence[pb.DeviceAssignment], strict: bool) -> None: ...
    def detach(self, job_id: str) -> None: ...
    def job_usage(self, job_id: str) -> JobUsageView | None: ...


Key = tuple[str, int]  # (job id, attempt)


class JobManager:
    def __init__(
        self,
        state: LocalState,
        *,
        sharing: JobSharing | None = None,
        clock: Clock | None = None,
        default_grace_period_s: int = 30,
        base_env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        on_exit: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.state = state
        self.clock = clock or SystemClock()
        self.runner = JobRunner(state, self.clock)
        self.sharing = sharing
        self.default_grace_period_s = default_grace_period_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.extra_env = dict(extra_env or {})  # e.g. the backend's GPUFLEET_SIM_DIR
        self.on_exit = on_exit
        self.records: dict[Key, JobRecord] = {}
        self._stopping: dict[Key, asyncio.Task[None]] = {}
        self._desired: list[apb.DesiredJob] = []
        self._reconcile_lock = asyncio.Lock()

    # ------------------------------------------------------------------ startup

    def recover(self) -> list[JobRecord]:
        """Load and re-adopt every job recorded in the state directory; returns the records. Call it from the
        event loop: stops that an earlier agent began are resumed as tasks."""
        for rec in self.state.load_all():
            adopted = self.runner.adopt(rec)
            self.records[(adopted.job_id, adopted.attempt)] = adopted
            if not adopted.finished:
                try:
                    self._attach(adopted)
                except GpuFleetError as e:
                    # keep it running (the coordinator decides); it just runs without enforcement
                    log.warning("re-adopted job %s runs without GPU sharing enforcement: %s", adopted.job_id, e)
                if adopted.state == STOPPING:
                    # the previous agent was stopping it (e.g. a limit violation): finish what it started
                    self._start_stop(adopted, adopted.stop_reason or "STOPPED", adopted.stop_message)
        return list(self.records.values())

    # ------------------------------------------------------------------ desired state

    async def reconcile(self, desired: Sequence[apb.DesiredJob], acknowledged: Iterable[str] = ()) -> None:
        """Make the node's jobs match ``desired`` (the full set that must run here)."""
        async with self._reconcile_lock:
            self._desired = list(desired)
            acked = set(acknowledged)
            for key, rec in list(self.records.items()):
                if rec.finished and rec.job_id in acked:
                    if rec.dir:  # records of jobs refused before they had a directory live only in memory
                        self.state.acknowledge(rec)
                    del self.records[key]
            wanted = {(d.job_id, d.attempt): d for d in desired}
            for key, rec in list(self.records.items()):
                if not rec.finished and key not in wanted and key not in self._stopping:
                    self._start_stop(rec, "STOPPED", "no longer in the coordinator's desired state")
            busy_ids = {k[0] for k, r in self.records.items() if not r.finished}
            for key, d in wanted.items():
                if key in self.records:
                    continue
                try:
                    if self.state.exists(d.job_id, d.attempt):
                        continue  # ran here before and was acknowledged: never start an attempt twice
                except InvalidInputError as e:
                    self._record_invalid(d, str(e))
                    continue
                if d.job_id in busy_ids:
                    continue  # another attempt of this job is still stopping: start after it ended
                self._start(d)

    def _start(self, d: apb.DesiredJob) -> None:
        key = (d.job_id, d.attempt)
        directory = self.state.create_dir(d.job_id, d.attempt)
        rec = JobRecord(
            job_id=d.job_id,
            attempt=d.attempt,
            state=STARTING,
            dir=str(directory),
            assignment=d.assignment.SerializeToString(),
            grace_period_s=d.grace_period_s or self.default_grace_period_s,
            max_runtime_s=int(d.spec.max_runtime_s),
        )
        devices = list(d.assignment.devices)
        try:
            sharing_env = self.sharing.job_env(d.job_id, devices) if self.sharing else {}
        except GpuFleetError as e:
            self._finish_failed(rec, f"cannot prepare the job's GPUs: {e}")
            return
        env = job_env.job_env(
            base={**self.base_env, **self.extra_env},
            spec_env=dict(d.spec.env),
            job_id=d.job_id,
            attempt=d.attempt,
            assignment=d.assignment,
            sharing_env=sharing_env,
        )
        rec = self.runner.start(rec, list(d.spec.command), env, d.spec.working_dir)
        self.records[key] = rec
        if rec.finished:
            self._notify_exit(rec)
            return
        try:
            self._attach(rec, strict=d.spec.strict_share)
        except GpuFleetError as e:
            self._start_stop(rec, "FAILED_TO_START", f"GPU sharing refused the job: {e}")

    def _record_invalid(self, d: apb.DesiredJob, message: str) -> None:
        """A desired job that cannot even get a directory: report it (in memory) as FAILED_TO_START."""
        key = (d.job_id, d.attempt)
        if key in self.records:
            return
        now = self.clock.now_ms()
        rec = JobRecord(
            job_id=d.job_id,
            attempt=d.attempt,
            state=FAILED_TO_START,
            dir="",
            exit_code=-1,
            reason="FAILED_TO_START",
            message=message,
            started_ms=now,
            finished_ms=now,
        )
        self.records[key] = rec
        self._notify_exit(rec)

    def _finish_failed(self, rec: JobRecord, message: str) -> None:
        now = self.clock.now_ms()
        done = rec.evolve(
            state=FAILED_TO_START, exit_code=-1, reason="FAILED_TO_START", message=message, started_ms=now
        )
        done = done.evolve(finished_ms=now)
        self.state.save(done)
        self.records[(rec.job_id, rec.attempt)] = done
        self._notify_exit(done)

    def _attach(self, rec: JobRecord, strict: bool = False) -> None:
        if self.sharing is None:
            return
        assignment = pb.TaskAssignment.FromString(rec.assignment)
        self.sharing.attach(rec.job_id, rec.pgid, list(assignment.devices), strict)

    # ------------------------------------------------------------------ stopping

    async def stop_job(self, job_id: str, reason: str, message: str) -> None:
        """Stop every running attempt of ``job_id`` and report it with ``reason`` (GpuSharing's callback)."""
        tasks = []
        for rec in list(self.records.values()):
            if rec.job_id == job_id and not rec.finished:
                tasks.append(self._start_stop(rec, reason, message))
        for t in tasks:
            await asyncio.shield(t)

    def _start_stop(self, rec: JobRecord, reason: str, message: str) -> asyncio.Task[None]:
        key = (rec.job_id, rec.attempt)
        existing = self._stopping.get(key)
        if existing is not None:
            return existing
        task = asyncio.get_running_loop().create_task(self._stop(rec, reason, message), name=f"stop-{rec.job_id}")
        self._stopping[key] = task
        task.add_done_callback(lambda _t: self._stopping.pop(key, None))
        return task

    async def _stop(self, rec: JobRecord, reason: str, message: str) -> None:
        key = (rec.job_id, rec.attempt)
        stopping = rec.evolve(
            state=STOPPING,
            stop_reason=reason,
            stop_message=message,
            stop_requested_ms=rec.stop_requested_ms or self.clock.now_ms(),
        )
        self.state.save(stopping)
        self.records[key] = stopping
        if self.sharing is not None:
            self.sharing.detach(rec.job_id)  # resumes a time-sliced (SIGSTOPped) job so it sees SIGTERM
        done = await self.runner.stop(stopping, reason, message, float(stopping.grace_period_s))
        self._finished(done)
        if self._desired:
            # a new attempt of the same job may have been waiting for this one to end
            await self.reconcile(self._desired)

    async def close(self) -> None:
        """Agent shutdown: abandon in-flight stops (records say STOPPING; the next agent finishes them)."""
        for t in list(self._stopping.values()):
            t.cancel()
        for t in list(self._stopping.values()):
            try:
                await t
            except asyncio.CancelledError:
                pass

    # ------------------------------------------------------------------ watching

    def check(self) -> list[JobRecord]:
        """Collect exits of running jobs and stop jobs past their max runtime; returns newly finished records."""
        out = []
        now = self.clock.now_ms()
        for key, rec in list(self.records.items()):
            if rec.finished or key in self._stopping:
                continue
            done = self.runner.check(rec)
            if done is not None:
                self._finished(done)
                out.append(done)
            elif rec.max_runtime_s > 0 and now - rec.started_ms > rec.max_runtime_s * 1000:
                self._start_stop(
                    rec, "MAX_RUNTIME_EXCEEDED", f"ran longer than its max_runtime_s of {rec.max_runtime_s}s"
                )
        return out

    def _finished(self, done: JobRecord) -> None:
        self.records[(done.job_id, done.attempt)] = done
        if self.sharing is not None:
            self.sharing.detach(done.job_id)
        self._notify_exit(done)

    def _notify_exit(self, rec: JobRecord) -> None:
        if self.on_exit is not None:
            self.on_exit(rec)

    # ------------------------------------------------------------------ reporting

    def local_job(self, rec: JobRecord) -> apb.LocalJob:
        assignment = pb.TaskAssignment.FromString(rec.assignment) if rec.assignment else pb.TaskAssignment()
        lj = apb.LocalJob(
            job_id=rec.job_id,
            attempt=rec.attempt,
            state=_STATE_PB[rec.state],
            pid=rec.pid,
            exit_code=rec.exit_code,
            reason=rec.reason if rec.finished else rec.stop_reason,
            message=rec.message if rec.finished else rec.stop_message,
            started_ms=rec.started_ms,
            finished_ms=rec.finished_ms,
            node_rank=assignment.node_rank,
        )
        usage = self.sharing.job_usage(rec.job_id) if self.sharing is not None and not rec.finished else None
        if usage is not None:
            lj.gpu_memory_used_mib = usage.used_mib
            lj.gpu_memory_limit_mib = usage.limit_mib
            lj.gpu_utilization_pct = usage.util_pct
            lj.share_target_milli = usage.share_target_milli
            lj.share_achieved_milli = usage.share_achieved_milli
        return lj

    def local_jobs(self) -> list[apb.LocalJob]:
        """Every running job and every finished job the coordinator has not acknowledged yet."""
        return [self.local_job(r) for r in self.records.values()]

    def read_logs(self, request: apb.ReadLogs) -> list[apb.LogData]:
        """Answer a ReadLogs command: one or more LogData, ``eof`` on the last."""
        rid = request.request_id
        try:
            directory = self.state.latest_dir(request.job_id)
        except InvalidInputError as e:
            return [apb.LogData(request_id=rid, eof=True, error=str(e))]
        path = directory / LOG_FILE if directory is not None else None
        if path is None or not path.exists():
            return [apb.LogData(request_id=rid, eof=True, error=f"no logs for job {request.job_id} on this node")]
        chunks = read_log(path, offset=request.offset, max_bytes=request.max_bytes, tail_lines=request.tail_lines)
        return [apb.LogData(request_id=rid, data=c.data, offset=c.offset, eof=c.eof) for c in chunks]

    def log_path(self, job_id: str) -> Path | None:
        d = self.state.latest_dir(job_id)
        return d / LOG_FILE if d is not None else None


StopJob = Callable[[str, str, str], Awaitable[None]]
