"""Prometheus metrics of the agent's GPUs and jobs, in gpufleet's own registry.

GPU metrics use the DCGM exporter's names and labels (``gpu``, ``UUID``, ``modelName``, ``Hostname``) so
existing dashboards work: DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_DEV_MEM_COPY_UTIL (%), DCGM_FI_DEV_FB_USED and
DCGM_FI_DEV_FB_FREE (MiB), DCGM_FI_DEV_GPU_TEMP (C), DCGM_FI_DEV_POWER_USAGE (W), DCGM_FI_DEV_ECC_DBE_VOL_TOTAL,
plus gpufleet_gpu_healthy. Per job: gpufleet_job_gpu_memory_used_bytes, gpufleet_job_gpu_memory_limit_bytes,
gpufleet_job_gpu_util_percent, gpufleet_job_share_target_ratio, gpufleet_job_share_achieved_ratio; and
gpufleet_enforcement_actions_total{action,reason}.

Values are read from GpuSharing at scrape time (no work between scrapes). The daemon calls
:func:`start_metrics_server`; GpuSharing binds itself with :func:`register_sharing`.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gpufleet.agent.enforcement.manager import GpuSharing

MIB = 1024 * 1024

REGISTRY = CollectorRegistry(auto_describe=False)
"""The agent's own registry (not prometheus_client's global one)."""

_bound: weakref.WeakKeyDictionary[CollectorRegistry, SharingCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class SharingCollector:
    def __init__(self, sharing: GpuSharing, hostname: str) -> None:
        self.sharing = sharing
        self.hostname = hostname

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "UUID", "modelName", "Hostname"]
        models = {g.index: g.model for g in self.sharing.inventory()}
        fams = {
            "util": GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=labels),
            "mem_util": GaugeMetricFamily("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", labels=labels),
            "used": GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=labels),
            "free": GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=labels),
            "temp": GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=labels),
            "power": GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=labels),
            "ecc": GaugeMetricFamily("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Uncorrected ECC errors.", labels=labels),
            "healthy": GaugeMetricFamily("gpufleet_gpu_healthy", "1 if the GPU is healthy.", labels=labels),
        }
        for s in self.sharing.telemetry():
            lv = [str(s.index), s.uuid, models.get(s.index, ""), self.hostname]
            fams["util"].add_metric(lv, s.utilization_pct)
            fams["mem_util"].add_metric(lv, s.memory_utilization_pct)
            fams["used"].add_metric(lv, s.memory_used_mib)
            fams["free"].add_metric(lv, max(0, s.memory_total_mib - s.memory_used_mib))
            fams["temp"].add_metric(lv, s.temperature_c)
            fams["power"].add_metric(lv, s.power_mw / 1000)
            fams["ecc"].add_metric(lv, s.ecc_errors)
            fams["healthy"].add_metric(lv, 1 if s.healthy else 0)
        yield from fams.values()

        jl = ["job_id"]
        used = GaugeMetricFamily("gpufleet_job_gpu_memory_used_bytes", "GPU memory of the job's processes.", labels=jl)
        limit = GaugeMetricFamily("gpufleet_job_gpu_memory_limit_bytes", "The job's GPU memory limit.", labels=jl)
        util = GaugeMetricFamily("gpufleet_job_gpu_util_percent", "SM utilization of the job's processes.", labels=jl)
        target = GaugeMetricFamily("gpufleet_job_share_target_ratio", "The job's GPU share (0..1).", labels=jl)
        achieved = GaugeMetricFamily(
            "gpufleet_job_share_achieved_ratio", "Time allowed to run / wall time (0..1).", labels=jl
        )
        for job_id in self.sharing.job_ids():
            u = self.sharing.job_usage(job_id)
            if u is None:
                continue
            used.add_metric([job_id], u.used_mib * MIB)
            limit.add_metric([job_id], u.limit_mib * MIB)
            util.add_metric([job_id], max(0, u.util_pct))
            target.add_metric([job_id], u.share_target_milli / 1000)
            achieved.add_metric([job_id], u.share_achieved_milli / 1000)
        yield from (used, limit, util, target, achieved)

        actions = CounterMetricFamily(
            "gpufleet_enforcement_actions", "Enforcement actions taken.", labels=["action", "reason"]
        )
        for (action, reason), n in sorted(self.sharing.enforcement_actions().items()):
            actions.add_metric([action, reason], n)
        yield actions


def register_sharing(sharing: GpuSharing, registry: CollectorRegistry | None = None) -> SharingCollector:
    """Bind ``sharing`` to ``registry`` (default: :data:`REGISTRY`), replacing a previously bound one."""
    reg = REGISTRY if registry is None else registry
    collector = SharingCollector(sharing, socket.gethostname())
    with _lock:
        old = _bound.pop(reg, None)
        if old is not None:
            reg.unregister(old)
        reg.register(collector)
        _bound[reg] = collector
    return collector


def start_metrics_server(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread (port 0 picks a free one: ``server.server_port``)."""
    return start_http_server(port, addr=host, registry=REGISTRY if registry is None else registry)
