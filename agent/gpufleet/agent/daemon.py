"""AgentDaemon: one asyncio TaskGroup of named loops on a GPU host.

- ``connection``: :class:`CoordinatorClient` (register, status every interval, desired state, commands)
- ``job-watch``: collects job exits every ``jobs.check_interval_s`` and reports them (JobExited)
- ``gpu-sharing``: :meth:`GpuSharing.run` (sampler, memory watchdog, time-slicer, MPS daemons)
- ``gpu-health``: reports GPUs that turned unhealthy (GpuUnhealthy)
- ``log-gc``: removes logs of acknowledged jobs after ``jobs.log_retention_h``

Jobs never depend on the agent process: on SIGTERM/SIGINT only the agent exits; its jobs keep running under
their supervisors and are re-adopted by the next agent (see jobs/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

import psutil

from gpufleet.agent.backends.base import GpuBackend, GpuDevice, GpuSample
from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.config import AgentSettings
from gpufleet.agent.coordinator_client import CoordinatorClient
from gpufleet.agent.enforcement import GpuSharing
from gpufleet.agent.enforcement.memory import REASON as MEMORY_REASON
from gpufleet.agent.interruptions import WATCHERS, watch_interruptions
from gpufleet.agent.jobs.manager import JobManager
from gpufleet.agent.local_state import JobRecord, LocalState
from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import GpuFleetError, InvalidInputError, Problem
from gpufleet.common.systemd import sd_notify, watchdog_interval_s
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger("gpufleet.agent")
MIB = 1024 * 1024


def _agent_version() -> str:
    try:
        return version("gpufleet")
    except PackageNotFoundError:
        return "dev"


def default_address() -> str:
    """The first non-loopback IPv4 address of this host (no network traffic), else the loopback address."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


class AgentDaemon:
    def __init__(self, settings: AgentSettings, *, backend: GpuBackend | None = None, clock: Clock | None = None):
        self.settings = settings
        self.clock = clock or SystemClock()
        self.agent_id = os.urandom(8).hex()
        state_dir = settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend or create_backend(settings.gpu_backend, state_dir, node_name=settings.name)
        self.state = LocalState(state_dir)
        self.jobs = JobManager(
            self.state,
            clock=self.clock,
            default_grace_period_s=settings.jobs.default_grace_period_s,
            extra_env=self.backend.job_env(),
            on_exit=self._job_exited,
        )
        self.sharing = GpuSharing(self.backend, state_dir, settings.sharing, self._stop_job)
        self.jobs.sharing = self.sharing
        self.client = CoordinatorClient(settings.coordinators, self, settings.connection)
        self.address = settings.address or default_address()
        self.draining: apb.Drain | None = None
        self._last_inventory: bytes = b""
        self._metrics_server: WSGIServer | None = None
        self._interruptions: list[apb.SpotInterruption] = []
        self._stop = asyncio.Event()
        self.metrics_port = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`). Jobs keep running afterwards."""
        if self.settings.metrics_port:
            from gpufleet.agent.metrics import start_metrics_server

            try:
                server, _thread = start_metrics_server(self.settings.metrics_port, host=self.settings.metrics_host)
            except OSError as e:
                raise InvalidInputError(
                    Problem(
                        "metrics_port",
                        f"cannot serve metrics on {self.settings.metrics_host}:{self.settings.metrics_port}: "
                        f"{e.strerror}; pick a free port with --metrics-port (0: off)",
                    )
                ) from e
            self._metrics_server = server
            self.metrics_port = server.server_port
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.metrics_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        recovered = self.jobs.recover()
        running = sum(1 for r in recovered if not r.finished)
        log.info(
            "agent %s up: %d GPU(s) on %s backend, %d job(s) re-adopted, %d finished job(s) to report",
            self.settings.name,
            len(self.sharing.inventory()),
            self.backend.name,
            running,
            len(recovered) - running,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.client.run(), name="connection"),
                    tg.create_task(self._job_watch_loop(), name="job-watch"),
                    tg.create_task(self.sharing.run(), name="gpu-sharing"),
                    tg.create_task(self._health_loop(), name="gpu-health"),
                    tg.create_task(self._gc_loop(), name="log-gc"),
                    tg.create_task(self._watchdog_loop(), name="systemd-watchdog"),
                    tg.create_task(self._interruption_loop(), name="interruptions"),
                ]
                sd_notify("READY=1\nSTATUS=running")
                await self._stop.wait()
                log.info("agent %s shutting down; jobs keep running", self.settings.name)
                sd_notify("STOPPING=1")
                for t in tasks:
                    t.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.jobs.close()
            self.sharing.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ loops

    async def _job_watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.jobs.check_interval_s)
            try:
                self.jobs.check()
            except OSError as e:  # e.g. a full disk while saving a record: keep watching, jobs keep running
                log.error("checking jobs failed: %s", e)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for e in self.sharing.drain_health_events():
                self.client.send_event(
                    apb.AgentEvent(gpu_unhealthy=apb.GpuUnhealthy(gpu_index=e.index, uuid=e.uuid, reason=e.reason))
                )

    async def _watchdog_loop(self) -> None:
        """Ping systemd's watchdog (WatchdogSec=) from the event loop, so a stuck loop gets the agent restarted."""
        interval = watchdog_interval_s()
        if not interval:
            return
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _interruption_loop(self) -> None:
        """Forward cloud interruption notices; they are re-sent after every (re-)registration until the
        instance goes away, so a notice seen while disconnected still reaches the coordinator."""
        settings = self.settings.interruptions
        if settings.provider == "auto" and self.settings.provider in WATCHERS:
            settings = dataclasses.replace(settings, provider=self.settings.provider)
        async for event in watch_interruptions(settings):
            log.warning("cloud interruption notice: %s %s (deadline %d)", event.kind, event.detail, event.deadline_ms)
            self._interruptions.append(event)
            self.client.send_event(apb.AgentEvent(spot_interruption=event))

    def after_register(self) -> list[apb.AgentMessage]:
        return [apb.AgentMessage(event=apb.AgentEvent(spot_interruption=e)) for e in self._interruptions]

    async def _gc_loop(self) -> None:
        while True:
            removed = self.state.collect_garbage(self.settings.jobs.log_retention_h * 3600)
            if removed:
                log.info("removed logs of %d acknowledged job(s)", len(removed))
            await asyncio.sleep(3600)

    async def _stop_job(self, job_id: str, reason: str, message: str) -> None:
        """GpuSharing's enforcement callback: report the violation, then stop the job with that reason."""
        if reason == MEMORY_REASON:
            usage = self.sharing.job_usage(job_id)
            try:
                _pgid, devices = self.sharing.get_job(job_id)
            except GpuFleetError:
                devices = ()
            self.client.send_event(
                apb.AgentEvent(
                    limit_exceeded=apb.LimitExceeded(
                        job_id=job_id,
                        gpu_index=devices[0].gpu_index if devices else 0,
                        observed_mib=usage.used_mib if usage else 0,
                        allowed_mib=usage.limit_mib if usage else 0,
                    )
                )
            )
        await self.jobs.stop_job(job_id, reason, message)

    def _job_exited(self, rec: JobRecord) -> None:
        log.info(
            "job %s attempt %d finished: %s (%s) %s", rec.job_id, rec.attempt, rec.exit_code, rec.reason, rec.message
        )
        self.client.send_event(apb.AgentEvent(job_exited=apb.JobExited(job=self.jobs.local_job(rec))))

    # ------------------------------------------------------------------ AgentPeer (used by CoordinatorClient)

    def register(self) -> apb.Register:
        return apb.Register(
            inventory=self.inventory(),
            jobs=self.jobs.local_jobs(),
            join_token=self.settings.connection.join_token,
            agent_id=self.agent_id,
        )

    def status(self) -> apb.AgentStatus:
        self.jobs.check()
        st = apb.AgentStatus(
            at_ms=self.clock.now_ms(),
            gpus=[_telemetry(s) for s in self.sharing.telemetry()],
            jobs=self.jobs.local_jobs(),
        )
        gpus = [_gpu(d, self._mig_jobs()) for d in self.sharing.inventory()]
        blob = b"".join(g.SerializeToString(deterministic=True) for g in gpus)
        if blob != self._last_inventory:
            st.gpu_inventory.extend(gpus)
            self._last_inventory = blob
        return st

    async def on_desired(self, desired: apb.DesiredState) -> None:
        await self.jobs.reconcile(list(desired.jobs), list(desired.acknowledged_exits))

    async def on_command(self, command: apb.Command) -> list[apb.AgentMessage]:
        kind = command.WhichOneof("body")
        cid = command.command_id
        if kind == "read_logs":
            return [apb.AgentMessage(log_data=d) for d in self.jobs.read_logs(command.read_logs)]
        try:
            if kind == "apply_mig_layout":
                c = command.apply_mig_layout
                devices = await self.sharing.apply_mig_layout(c.gpu_index, list(c.profiles))
                msg = f"GPU {c.gpu_index}: {len(devices)} MIG instance(s): {', '.join(d.profile for d in devices)}"
            elif kind == "set_mig_mode":
                c2 = command.set_mig_mode
                await self.sharing.set_mig_mode(c2.gpu_index, c2.enabled)
                msg = f"GPU {c2.gpu_index}: MIG mode {'enabled' if c2.enabled else 'disabled'}"
            elif kind == "drain":
                self.draining = command.drain
                msg = f"draining: {command.drain.reason or 'requested'}"
                log.info("coordinator drains this node: %s", command.drain.reason)
            else:
                return [_result(cid, False, f"unknown command {kind!r}; this agent is {_agent_version()}")]
        except GpuFleetError as e:
            return [_result(cid, False, str(e), self._gpus())]
        return [_result(cid, True, msg, self._gpus())]

    # ------------------------------------------------------------------ inventory

    def _mig_jobs(self) -> dict[str, str]:
        """MIG device uuid -> job id, for the jobs running here."""
        out: dict[str, str] = {}
        for rec in self.jobs.records.values():
            if rec.finished or not rec.assignment:
                continue
            for d in pb.TaskAssignment.FromString(rec.assignment).devices:
                if d.mig_device_uuid:
                    out[d.mig_device_uuid] = rec.job_id
        return out

    def _gpus(self) -> list[pb.Gpu]:
        mig_jobs = self._mig_jobs()
        return [_gpu(d, mig_jobs) for d in self.sharing.inventory()]

    def inventory(self) -> pb.NodeInventory:
        s = self.settings
        return pb.NodeInventory(
            name=s.name,
            hostname=socket.gethostname(),
            address=self.address,
            gpus=self._gpus(),
            cpu_milli=self.settings.cpu_milli or (psutil.cpu_count() or 1) * 1000,
            memory_mib=self.settings.memory_mib or psutil.virtual_memory().total // MIB,
            labels=dict(s.labels),
            provider=s.provider,
            region=s.region,
            zone=s.zone,
            instance_type=s.instance_type,
            instance_id=s.instance_id,
            spot=s.spot,
            agent_version=_agent_version(),
            gpu_backend=self.backend.name,
        )


def _result(cid: str, ok: bool, message: str, gpus: list[pb.Gpu] | None = None) -> apb.AgentMessage:
    return apb.AgentMessage(command_result=apb.CommandResult(command_id=cid, ok=ok, message=message, gpus=gpus or []))


def _mig_mode(enabled: bool) -> pb.MigMode.ValueType:
    return pb.MIG_MODE_ENABLED if enabled else pb.MIG_MODE_DISABLED


def _gpu(d: GpuDevice, mig_jobs: dict[str, str]) -> pb.Gpu:
    return pb.Gpu(
        index=d.index,
        uuid=d.uuid,
        model=d.model,
        product_name=d.product_name,
        memory_mib=d.memory_mib,
        mig_capable=d.mig_capable,
        mig_mode=_mig_mode(d.mig_enabled) if d.mig_capable else pb.MIG_MODE_UNSPECIFIED,
        mig_mode_pending=_mig_mode(d.mig_enabled_pending) if d.mig_capable else pb.MIG_MODE_UNSPECIFIED,
        mig_instances=[
            pb.MigInstance(
                profile=m.profile,
                gi_id=m.gi_id,
                ci_id=m.ci_id,
                placement_start=m.start,
                placement_size=m.size,
                uuid=m.uuid,
                memory_mib=m.memory_mib,
                job_id=mig_jobs.get(m.uuid, ""),
            )
            for m in d.mig_devices
        ],
        healthy=d.healthy,
        health_reason=d.health_reason,
        numa_node=d.numa_node,
        nvlink_peers=list(d.nvlink_peers),
        mps_available=d.mps_available,
    )


def _telemetry(s: GpuSample) -> pb.GpuTelemetry:
    return pb.GpuTelemetry(
        index=s.index,
        uuid=s.uuid,
        utilization_pct=s.utilization_pct,
        memory_utilization_pct=s.memory_utilization_pct,
        memory_used_mib=s.memory_used_mib,
        memory_total_mib=s.memory_total_mib,
        temperature_c=s.temperature_c,
        power_mw=s.power_mw,
        ecc_errors=s.ecc_errors,
        healthy=s.healthy,
        health_reason=s.health_reason,
    )


async def run_daemon(settings: AgentSettings) -> None:
    daemon = AgentDaemon(settings)
    with contextlib.suppress(asyncio.CancelledError):
        await daemon.run()
