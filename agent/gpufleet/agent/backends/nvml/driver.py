"""A thin typed wrapper of nvidia-ml-py (``import pynvml``): one method per NVML call, no logic.

Each method maps ``pynvml.NVMLError`` to :class:`NvmlError` (with NVML's return code) and ctypes structs to
small dataclasses. All decisions live in backend.py, which is tested against ``FakeNvmlDriver`` (a replay
of recorded answers, fake_driver.py) implementing the same :class:`NvmlDriver` protocol.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import pynvml

from gpufleet.common.errors import BackendError

# NVML return codes the backend decides on (nvml.h)
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_IN_USE = 19
NVML_ERROR_INVALID_ARGUMENT = 2

# event types (nvml.h nvmlEventType*)
EVENT_SINGLE_BIT_ECC = 0x1
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID_CRITICAL = 0x8

NVLINK_DEVICE_TYPE_SWITCH = 2  # NVML_NVLINK_DEVICE_TYPE_SWITCH

Handle = Any  # an opaque NVML handle (device, MIG device, GPU instance, compute instance, event set)


class NvmlError(BackendError):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"NVML error {code}: {message}")


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    total: int  # bytes
    used: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    used_bytes: int | None  # None: not available (NVML_VALUE_NOT_AVAILABLE)
    gpu_instance_id: int = 0xFFFFFFFF
    compute_instance_id: int = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ProcessUtil:
    pid: int
    timestamp: int  # microseconds
    sm_util: int
    mem_util: int


@dataclass(frozen=True, slots=True)
class GiProfileInfo:
    id: int
    slice_count: int
    instance_count: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class GiInfo:
    id: int
    profile_id: int
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class CiProfileInfo:
    id: int
    slice_count: int


@dataclass(frozen=True, slots=True)
class EventData:
    device: Handle
    event_type: int
    event_data: int  # the XID for XID events
    gpu_instance_id: int
    compute_instance_id: int


class NvmlDriver(Protocol):
    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def device_count(self) -> int: ...
    def device_handle(self, index: int) -> Handle: ...
    def uuid(self, h: Handle) -> str: ...
    def name(self, h: Handle) -> str: ...
    def memory_info(self, h: Handle) -> MemoryInfo: ...
    def utilization(self, h: Handle) -> tuple[int, int]: ...
    def compute_processes(self, h: Handle) -> list[ProcessInfo]: ...
    def process_utilization(self, h: Handle, since_us: int) -> list[ProcessUtil]: ...
    def temperature(self, h: Handle) -> int: ...
    def power_usage_mw(self, h: Handle) -> int: ...
    def ecc_uncorrected_volatile(self, h: Handle) -> int: ...
    def numa_node(self, h: Handle) -> int: ...
    def pci_bus_id(self, h: Handle) -> str: ...
    def nvlink_active(self, h: Handle, link: int) -> bool: ...
    def nvlink_remote_bus_id(self, h: Handle, link: int) -> str: ...
    def nvlink_remote_type(self, h: Handle, link: int) -> int: ...
    def mig_mode(self, h: Handle) -> tuple[int, int]: ...
    def set_mig_mode(self, h: Handle, enabled: bool) -> int: ...
    def max_mig_devices(self, h: Handle) -> int: ...
    def mig_device_handle(self, h: Handle, index: int) -> Handle: ...
    def gpu_instance_id(self, mig: Handle) -> int: ...
    def compute_instance_id(self, mig: Handle) -> int: ...
    def gi_profile_info(self, h: Handle, profile: int) -> GiProfileInfo: ...
    def gpu_instances(self, h: Handle, profile_id: int, max_count: int) -> list[Handle]: ...
    def gpu_instance_info(self, gi: Handle) -> GiInfo: ...
    def create_gpu_instance(self, h: Handle, profile_id: int, start: int, size: int) -> Handle: ...
    def destroy_gpu_instance(self, gi: Handle) -> None: ...
    def ci_profile_info(self, gi: Handle, profile: int) -> CiProfileInfo: ...
    def compute_instances(self, gi: Handle, profile_id: int, max_count: int) -> list[Handle]: ...
    def create_compute_instance(self, gi: Handle, profile_id: int) -> Handle: ...
    def destroy_compute_instance(self, ci: Handle) -> None: ...
    def event_set_create(self) -> Handle: ...
    def supported_events(self, h: Handle) -> int: ...
    def register_events(self, h: Handle, mask: int, event_set: Handle) -> None: ...
    def event_wait(self, event_set: Handle, timeout_ms: int) -> EventData: ...
    def event_set_free(self, event_set: Handle) -> None: ...


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except pynvml.NVMLError as e:
        raise NvmlError(int(e.value), str(e)) from e


class PynvmlDriver:
    """See the module docstring."""

    def init(self) -> None:
        with _mapped():
            pynvml.nvmlInit()

    def shutdown(self) -> None:
        with _mapped():
            pynvml.nvmlShutdown()

    def driver_version(self) -> str:
        with _mapped():
            return str(pynvml.nvmlSystemGetDriverVersion())

    def device_count(self) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetCount())

    def device_handle(self, index: int) -> Handle:
        with _mapped():
            return pynvml.nvmlDeviceGetHandleByIndex(index)

    def uuid(self, h: Handle) -> str:
        with _mapped():
            return str(pynvml.nvmlDeviceGetUUID(h))

    def name(self, h: Handle) -> str:
        with _mapped():
            return str(pynvml.nvmlDeviceGetName(h))

    def memory_info(self, h: Handle) -> MemoryInfo:
        with _mapped():
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            return MemoryInfo(int(m.total), int(m.used))

    def utilization(self, h: Handle) -> tuple[int, int]:
        with _mapped():
            u = pynvml.nvmlDeviceGetUtilizationRates(h)
            return int(u.gpu), int(u.memory)

    def compute_processes(self, h: Handle) -> list[ProcessInfo]:
        with _mapped():
            return [
                ProcessInfo(
                    int(p.pid),
                    None if p.usedGpuMemory is None else int(p.usedGpuMemory),
                    int(getattr(p, "gpuInstanceId", 0xFFFFFFFF)),
                    int(getattr(p, "computeInstanceId", 0xFFFFFFFF)),
                )
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            ]

    def process_utilization(self, h: Handle, since_us: int) -> list[ProcessUtil]:
        with _mapped():
            return [
                ProcessUtil(int(s.pid), int(s.timeStamp), int(s.smUtil), int(s.memUtil))
                for s in pynvml.nvmlDeviceGetProcessUtilization(h, since_us)
            ]

    def temperature(self, h: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))

    def power_usage_mw(self, h: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetPowerUsage(h))

    def ecc_uncorrected_volatile(self, h: Handle) -> int:
        with _mapped():
            return int(
                pynvml.nvmlDeviceGetTotalEccErrors(
                    h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
                )
            )

    def numa_node(self, h: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetNumaNodeId(h))

    def pci_bus_id(self, h: Handle) -> str:
        with _mapped():
            return str(pynvml.nvmlDeviceGetPciInfo(h).busId)

    def nvlink_active(self, h: Handle, link: int) -> bool:
        with _mapped():
            return bool(pynvml.nvmlDeviceGetNvLinkState(h, link))

    def nvlink_remote_bus_id(self, h: Handle, link: int) -> str:
        with _mapped():
            return str(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)

    def nvlink_remote_type(self, h: Handle, link: int) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link))

    def mig_mode(self, h: Handle) -> tuple[int, int]:
        with _mapped():
            current, pending = pynvml.nvmlDeviceGetMigMode(h)
            return int(current), int(pending)

    def set_mig_mode(self, h: Handle, enabled: bool) -> int:
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        with _mapped():
            return int(pynvml.nvmlDeviceSetMigMode(h, mode))

    def max_mig_devices(self, h: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetMaxMigDeviceCount(h))

    def mig_device_handle(self, h: Handle, index: int) -> Handle:
        with _mapped():
            return pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, index)

    def gpu_instance_id(self, mig: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetGpuInstanceId(mig))

    def compute_instance_id(self, mig: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetComputeInstanceId(mig))

    def gi_profile_info(self, h: Handle, profile: int) -> GiProfileInfo:
        with _mapped():
            i = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, profile)
            return GiProfileInfo(int(i.id), int(i.sliceCount), int(i.instanceCount), int(i.memorySizeMB))

    def gpu_instances(self, h: Handle, profile_id: int, max_count: int) -> list[Handle]:
        arr = (pynvml.c_nvmlGpuInstance_t * max(1, max_count))()
        count = ctypes.c_uint(0)
        with _mapped():
            pynvml.nvmlDeviceGetGpuInstances(h, profile_id, arr, ctypes.byref(count))
        return [arr[i] for i in range(count.value)]

    def gpu_instance_info(self, gi: Handle) -> GiInfo:
        with _mapped():
            i = pynvml.nvmlGpuInstanceGetInfo(gi)
            return GiInfo(int(i.id), int(i.profileId), int(i.placement.start), int(i.placement.size))

    def create_gpu_instance(self, h: Handle, profile_id: int, start: int, size: int) -> Handle:
        placement = pynvml.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        placement.size = size
        with _mapped():
            return pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile_id, ctypes.byref(placement))

    def destroy_gpu_instance(self, gi: Handle) -> None:
        with _mapped():
            pynvml.nvmlGpuInstanceDestroy(gi)

    def ci_profile_info(self, gi: Handle, profile: int) -> CiProfileInfo:
        with _mapped():
            i = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, profile, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
            return CiProfileInfo(int(i.id), int(i.sliceCount))

    def compute_instances(self, gi: Handle, profile_id: int, max_count: int) -> list[Handle]:
        arr = (pynvml.c_nvmlComputeInstance_t * max(1, max_count))()
        count = ctypes.c_uint(0)
        with _mapped():
            pynvml.nvmlGpuInstanceGetComputeInstances(gi, profile_id, arr, ctypes.byref(count))
        return [arr[i] for i in range(count.value)]

    def create_compute_instance(self, gi: Handle, profile_id: int) -> Handle:
        with _mapped():
            return pynvml.nvmlGpuInstanceCreateComputeInstance(gi, profile_id)

    def destroy_compute_instance(self, ci: Handle) -> None:
        with _mapped():
            pynvml.nvmlComputeInstanceDestroy(ci)

    def event_set_create(self) -> Handle:
        with _mapped():
            return pynvml.nvmlEventSetCreate()

    def supported_events(self, h: Handle) -> int:
        with _mapped():
            return int(pynvml.nvmlDeviceGetSupportedEventTypes(h))

    def register_events(self, h: Handle, mask: int, event_set: Handle) -> None:
        with _mapped():
            pynvml.nvmlDeviceRegisterEvents(h, mask, event_set)

    def event_wait(self, event_set: Handle, timeout_ms: int) -> EventData:
        with _mapped():
            d = pynvml.nvmlEventSetWait_v2(event_set, timeout_ms)
            return EventData(
                d.device, int(d.eventType), int(d.eventData), int(d.gpuInstanceId), int(d.computeInstanceId)
            )

    def event_set_free(self, event_set: Handle) -> None:
        with _mapped():
            pynvml.nvmlEventSetFree(event_set)
