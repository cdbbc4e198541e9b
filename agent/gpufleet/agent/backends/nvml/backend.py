"""NvmlBackend: the GpuBackend contract over an :class:`NvmlDriver` (all logic; the driver has none).

What it reads: UUID, name (-> catalog model), memory, utilisation (GPU, memory), running compute processes
with their used memory (per MIG device when MIG is on), per-process utilisation samples, temperature, power,
uncorrected ECC errors, critical events (XIDs, double-bit ECC: the GPU is marked unhealthy), MIG mode
(current and pending), GPU/compute instances with their profiles and MIG device UUIDs, NUMA node and NVLink
peers (once, at start). What it writes: MIG mode, GPU and compute instances. Nothing else.

Calls that a device does not support (NVML_ERROR_NOT_SUPPORTED) read as "unknown" (0 / empty), never fail a
sample. See backends/base.py for the contract.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from gpufleet.agent.backends.base import GpuDevice, GpuSample, HealthEvent, MigDevice, ProcessUsage
from gpufleet.agent.backends.mig_plan import plan_relayout
from gpufleet.agent.backends.nvml.driver import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    NVLINK_DEVICE_TYPE_SWITCH,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    Handle,
    NvmlDriver,
    NvmlError,
    ProcessInfo,
    ProcessUtil,
)
from gpufleet.common.errors import (
    BackendError,
    DeviceLostError,
    FailedPreconditionError,
    NotFoundError,
    UnsupportedOperationError,
)
from gpufleet.common.gpu_models import MODELS, GpuModel, MigProfile, PlacedInstance, model_for_product_name

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
MAX_NVLINKS = 18
#: XIDs caused by the application, not the GPU (as NVIDIA's k8s device plugin treats them): not unhealthy
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
#: NVML compute-instance profile for a GPU instance with N compute slices (full-size compute instance)
CI_PROFILE_FOR_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}

NO_DRIVER_HELP = (
    "NVML could not be initialised ({err}). Is the NVIDIA driver installed and is this a GPU host? "
    "To run the agent without GPUs, use simulated ones: --simulate MODEL:COUNT[,MODEL:COUNT...] "
    "(e.g. --simulate H100-80GB:8)"
)

_ERRORS: dict[int, type[BackendError]] = {
    NVML_ERROR_GPU_IS_LOST: DeviceLostError,
    NVML_ERROR_NOT_SUPPORTED: UnsupportedOperationError,
}


def _map(e: NvmlError, what: str) -> BackendError:
    return _ERRORS.get(e.code, BackendError)(f"{what}: {e}")


@dataclass(slots=True)
class _Dev:
    index: int
    handle: Handle
    uuid: str
    product_name: str
    model: GpuModel | None
    memory_mib: int
    numa_node: int
    bus_id: str
    nvlink_peers: tuple[int, ...] = ()
    health_reason: str = ""
    last_util_ts: int = 0


class NvmlBackend:
    """See the module docstring."""

    name = "nvml"

    def __init__(
        self,
        driver: NvmlDriver,
        *,
        node_name: str = "",
        state_dir: Path | None = None,
        mps_binary: str = "nvidia-cuda-mps-control",
    ) -> None:
        self.driver = driver
        self.node_name = node_name
        self.state_dir = state_dir
        try:
            driver.init()
        except NvmlError as e:
            raise BackendError(NO_DRIVER_HELP.format(err=e)) from e
        self._mps = shutil.which(mps_binary) is not None
        self._devs: list[_Dev] = []
        for i in range(driver.device_count()):
            h = driver.device_handle(i)
            name = driver.name(h)
            model = MODELS.get(model_for_product_name(name))
            self._devs.append(
                _Dev(
                    index=i,
                    handle=h,
                    uuid=driver.uuid(h),
                    product_name=name,
                    model=model,
                    memory_mib=driver.memory_info(h).total // MIB,
                    numa_node=self._optional(partial(driver.numa_node, h), -1),
                    bus_id=self._optional(partial(driver.pci_bus_id, h), ""),
                )
            )
        self._link_peers()
        self._events = self._register_events()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _optional(call: Callable[[], T], default: T) -> T:
        """Run a read the device may not support; NOT_SUPPORTED / NO_PERMISSION / NOT_FOUND -> default."""
        try:
            return call()
        except NvmlError as e:
            if e.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_FOUND):
                return default
            raise _map(e, "NVML read failed") from e

    def _mib_total(self, h: Handle) -> int:
        return self.driver.memory_info(h).total // MIB

    def _dev(self, index: int) -> _Dev:
        if not 0 <= index < len(self._devs):
            raise NotFoundError(f"no GPU with index {index} (this node has {len(self._devs)})")
        return self._devs[index]

    def _link_peers(self) -> None:
        """NVLink peers: GPUs linked directly, and all GPUs behind NVSwitches (HGX/DGX) are peers."""
        by_bus = {d.bus_id.lower(): d.index for d in self._devs if d.bus_id}
        direct: dict[int, set[int]] = {d.index: set() for d in self._devs}
        switched: set[int] = set()
        for d in self._devs:
            for link in range(MAX_NVLINKS):
                try:
                    if not self.driver.nvlink_active(d.handle, link):
                        continue
                    if self.driver.nvlink_remote_type(d.handle, link) == NVLINK_DEVICE_TYPE_SWITCH:
                        switched.add(d.index)
                        continue
                    remote = self.driver.nvlink_remote_bus_id(d.handle, link).lower()
                except NvmlError as e:
                    if e.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND):
                        break
                    raise _map(e, f"reading NVLink {link} of GPU {d.index}") from e
                peer = by_bus.get(remote)
                if peer is not None and peer != d.index:
                    direct[d.index].add(peer)
        for d in self._devs:
            peers = direct[d.index] | (switched - {d.index} if d.index in switched else set())
            d.nvlink_peers = tuple(sorted(peers))

    def _register_events(self) -> Handle | None:
        try:
            event_set = self.driver.event_set_create()
        except NvmlError as e:
            log.warning("NVML events unavailable (%s): XIDs will not be detected", e)
            return None
        for d in self._devs:
            try:
                mask = self.driver.supported_events(d.handle) & (EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC)
                if mask:
                    self.driver.register_events(d.handle, mask, event_set)
            except NvmlError as e:
                log.warning("cannot watch events of GPU %d: %s", d.index, e)
        return event_set

    def _mig_mode(self, d: _Dev) -> tuple[bool, bool, bool]:
        """(capable, enabled, pending enabled)."""
        if d.model is None or not d.model.mig_capable:
            return False, False, False
        current, pending = self._optional(partial(self.driver.mig_mode, d.handle), (-1, -1))
        if current < 0:
            return False, False, False
        return True, current == 1, pending == 1

    def _mig_handles(self, d: _Dev) -> list[tuple[Handle, int, int, str]]:
        """(MIG device handle, GI id, CI id, MIG uuid) for every MIG device present."""
        out = []
        for i in range(self._optional(partial(self.driver.max_mig_devices, d.handle), 0)):
            try:
                mh = self.driver.mig_device_handle(d.handle, i)
            except NvmlError as e:
                if e.code == NVML_ERROR_NOT_FOUND:
                    continue
                raise _map(e, f"listing MIG devices of GPU {d.index}") from e
            out.append((mh, self.driver.gpu_instance_id(mh), self.driver.compute_instance_id(mh), self.driver.uuid(mh)))
        return out

    def _gpu_instances(self, d: _Dev) -> list[tuple[Handle, MigProfile, int, int]]:
        """(GI handle, catalog profile, GI id, placement start) for every GPU instance."""
        assert d.model is not None
        out = []
        for prof in d.model.mig_profiles:
            info = self._optional(partial(self.driver.gi_profile_info, d.handle, prof.nvml_profile), None)
            if info is None:
                continue
            for gi in self.driver.gpu_instances(d.handle, info.id, info.instance_count):
                gi_info = self.driver.gpu_instance_info(gi)
                out.append((gi, prof, gi_info.id, gi_info.start))
        return out

    def _mig_devices(self, d: _Dev) -> tuple[MigDevice, ...]:
        if d.model is None:
            return ()
        by_gi = {gi_id: (prof, start) for _, prof, gi_id, start in self._gpu_instances(d)}
        out = []
        for mh, gi_id, ci_id, uuid in self._mig_handles(d):
            prof_start = by_gi.get(gi_id)
            if prof_start is None:
                continue
            prof, start = prof_start
            mem = self._optional(partial(self._mib_total, mh), prof.memory_mib)
            out.append(MigDevice(gi_id, ci_id, prof.name, start, prof.memory_slices, uuid, mem))
        return tuple(sorted(out, key=lambda m: m.start))

    # ------------------------------------------------------------------ GpuBackend

    def inventory(self) -> list[GpuDevice]:
        out = []
        for d in self._devs:
            capable, enabled, pending = self._mig_mode(d)
            out.append(
                GpuDevice(
                    index=d.index,
                    uuid=d.uuid,
                    model=d.model.name if d.model else model_for_product_name(d.product_name),
                    product_name=d.product_name,
                    memory_mib=d.memory_mib,
                    mig_capable=capable,
                    mig_enabled=enabled,
                    mig_enabled_pending=pending,
                    mig_devices=self._mig_devices(d) if enabled else (),
                    numa_node=d.numa_node,
                    nvlink_peers=d.nvlink_peers,
                    mps_available=self._mps and not enabled,
                    healthy=not d.health_reason,
                    health_reason=d.health_reason,
                )
            )
        return out

    def _processes(self, d: _Dev, mig_enabled: bool) -> list[ProcessUsage]:
        util: dict[int, int] = {}
        no_samples: list[ProcessUtil] = []
        samples = self._optional(partial(self.driver.process_utilization, d.handle, d.last_util_ts), no_samples)
        for s in samples:
            util[s.pid] = max(util.get(s.pid, 0), s.sm_util)
            d.last_util_ts = max(d.last_util_ts, s.timestamp)
        procs: list[ProcessUsage] = []
        none: list[ProcessInfo] = []
        if mig_enabled:
            for mh, _, _, uuid in self._mig_handles(d):
                for p in self._optional(partial(self.driver.compute_processes, mh), none):
                    procs.append(ProcessUsage(p.pid, (p.used_bytes or 0) // MIB, util.get(p.pid, -1), uuid))
        else:
            for p in self._optional(partial(self.driver.compute_processes, d.handle), none):
                procs.append(ProcessUsage(p.pid, (p.used_bytes or 0) // MIB, util.get(p.pid, -1)))
        return procs

    def sample(self) -> list[GpuSample]:
        out = []
        for d in self._devs:
            try:
                mem = self.driver.memory_info(d.handle)
            except NvmlError as e:
                if e.code != NVML_ERROR_GPU_IS_LOST:
                    raise _map(e, f"sampling GPU {d.index}") from e
                d.health_reason = "GPU is lost (NVML_ERROR_GPU_IS_LOST)"
                out.append(
                    GpuSample(d.index, d.uuid, 0, 0, 0, d.memory_mib, healthy=False, health_reason=d.health_reason)
                )
                continue
            _, mig_enabled, _ = self._mig_mode(d)
            gpu_util, mem_util = self._optional(partial(self.driver.utilization, d.handle), (0, 0))
            out.append(
                GpuSample(
                    index=d.index,
                    uuid=d.uuid,
                    utilization_pct=gpu_util,
                    memory_utilization_pct=mem_util,
                    memory_used_mib=mem.used // MIB,
                    memory_total_mib=mem.total // MIB,
                    temperature_c=self._optional(partial(self.driver.temperature, d.handle), 0),
                    power_mw=self._optional(partial(self.driver.power_usage_mw, d.handle), 0),
                    ecc_errors=self._optional(partial(self.driver.ecc_uncorrected_volatile, d.handle), 0),
                    processes=tuple(self._processes(d, mig_enabled)),
                    healthy=not d.health_reason,
                    health_reason=d.health_reason,
                )
            )
        return out

    def health_events(self) -> list[HealthEvent]:
        if self._events is None:
            return []
        out: list[HealthEvent] = []
        by_uuid = {d.uuid: d for d in self._devs}
        for _ in range(1000):  # bounded: never spin on a broken event set
            try:
                ev = self.driver.event_wait(self._events, 0)
            except NvmlError as e:
                if e.code != NVML_ERROR_TIMEOUT:
                    log.warning("NVML event wait failed: %s", e)
                break
            d = by_uuid.get(self.driver.uuid(ev.device))
            if d is None:
                continue
            if ev.event_type & EVENT_XID_CRITICAL:
                if ev.event_data in APPLICATION_XIDS:
                    log.info("GPU %d: application XID %d (not a GPU fault)", d.index, ev.event_data)
                    continue
                reason = f"XID {ev.event_data}"
            elif ev.event_type & EVENT_DOUBLE_BIT_ECC:
                reason = "double-bit ECC error"
            else:
                continue
            d.health_reason = reason
            extra = {"gpu_instance_id": str(ev.gpu_instance_id)} if ev.gpu_instance_id != 0xFFFFFFFF else {}
            out.append(
                HealthEvent(d.index, d.uuid, reason, ev.event_data if ev.event_type & EVENT_XID_CRITICAL else 0, extra)
            )
        return out

    def apply_mig_layout(self, index: int, profiles: Sequence[str], keep_uuids: Sequence[str] = ()) -> list[MigDevice]:
        d = self._dev(index)
        capable, enabled, pending = self._mig_mode(d)
        if not capable or d.model is None:
            raise UnsupportedOperationError(f"GPU {index} ({d.product_name}) is not MIG-capable")
        if not enabled:
            hint = " (enabling is pending a GPU reset: nvidia-smi -r -i N)" if pending else ""
            raise FailedPreconditionError(f"MIG mode is disabled on GPU {index}{hint}; enable it first")
        gis = self._gpu_instances(d)
        uuid_by_gi = {gi_id: uuid for _, gi_id, _, uuid in self._mig_handles(d)}
        placed = {gi_id: PlacedInstance(prof, start) for _, prof, gi_id, start in gis}
        gi_by_uuid = {u: g for g, u in uuid_by_gi.items()}
        missing = [u for u in keep_uuids if u not in gi_by_uuid]
        if missing:
            raise NotFoundError(f"no MIG device {', '.join(missing)} on GPU {index}")
        must = [placed[gi_by_uuid[u]] for u in keep_uuids]
        keep, create = plan_relayout(d.model, list(placed.values()), must, list(profiles))
        try:
            for gi, _prof, gi_id, _start in gis:
                if placed[gi_id] not in keep:
                    self._destroy_gi(gi)
            for p in create:
                info = self.driver.gi_profile_info(d.handle, p.profile.nvml_profile)
                gi = self.driver.create_gpu_instance(d.handle, info.id, p.start, p.profile.memory_slices)
                ci_profile = CI_PROFILE_FOR_SLICES[p.profile.compute_slices]
                ci_info = self.driver.ci_profile_info(gi, ci_profile)
                self.driver.create_compute_instance(gi, ci_info.id)
        except NvmlError as e:
            raise _map(e, f"changing the MIG layout of GPU {index}") from e
        return list(self._mig_devices(d))

    def _destroy_gi(self, gi: Handle) -> None:
        for ci_profile in sorted(set(CI_PROFILE_FOR_SLICES.values())):
            try:
                info = self.driver.ci_profile_info(gi, ci_profile)
            except NvmlError as e:
                if e.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND):
                    continue
                raise
            for ci in self.driver.compute_instances(gi, info.id, 8):
                self.driver.destroy_compute_instance(ci)
        self.driver.destroy_gpu_instance(gi)

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        d = self._dev(index)
        capable, _, _ = self._mig_mode(d)
        if not capable:
            raise UnsupportedOperationError(f"GPU {index} ({d.product_name}) is not MIG-capable")
        try:
            self.driver.set_mig_mode(d.handle, enabled)
        except NvmlError as e:
            raise _map(e, f"setting MIG mode on GPU {index}") from e

    def job_env(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        if self._events is not None:
            try:
                self.driver.event_set_free(self._events)
            except NvmlError as e:
                log.warning("freeing the NVML event set: %s", e)
            self._events = None
        try:
            self.driver.shutdown()
        except NvmlError as e:
            log.warning("nvmlShutdown: %s", e)
