"""The GPU backend contract: what the agent needs from a GPU driver.

Two implementations: ``NvmlBackend`` (real hosts, over nvidia-ml-py) and ``SimulatedBackend`` (a device
catalog from :mod:`gpufleet.common.gpu_models`, with per-process GPU memory use that programs can set).

Assumptions every implementation keeps:
- ``inventory()`` is cheap enough to call after every MIG change; ``sample()`` is cheap enough to call every
  few hundred milliseconds.
- Indices are stable for the life of the process; UUIDs are stable across restarts.
- Methods raise :class:`gpufleet.common.errors.BackendError` subclasses, never vendor exceptions.
- MIG changes (``apply_mig_layout``) never touch a GPU instance whose slice a caller says is in use; turning
  MIG mode on or off (``set_mig_mode``) needs the GPU idle and takes effect after a GPU reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class MigDevice:
    gi_id: int
    ci_id: int
    profile: str  # e.g. "3g.40gb"
    start: int  # first memory slice
    size: int  # memory slices
    uuid: str  # "MIG-..."
    memory_mib: int


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One physical GPU as inventoried."""

    index: int
    uuid: str
    model: str  # catalog name (H100-80GB), or NVML's name for unknown devices
    product_name: str
    memory_mib: int
    mig_capable: bool = False
    mig_enabled: bool = False
    mig_enabled_pending: bool = False
    mig_devices: tuple[MigDevice, ...] = ()
    numa_node: int = -1
    nvlink_peers: tuple[int, ...] = ()
    mps_available: bool = False
    healthy: bool = True
    health_reason: str = ""


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    pid: int
    used_memory_mib: int
    sm_util_pct: int = -1  # -1: not sampled
    mig_uuid: str = ""  # set when the process runs on a MIG device


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One telemetry sample of one GPU."""

    index: int
    uuid: str
    utilization_pct: int
    memory_utilization_pct: int
    memory_used_mib: int
    memory_total_mib: int
    temperature_c: int = 0
    power_mw: int = 0
    ecc_errors: int = 0
    processes: tuple[ProcessUsage, ...] = ()
    healthy: bool = True
    health_reason: str = ""


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A critical event (e.g. an XID) that marks a GPU unhealthy."""

    index: int
    uuid: str
    reason: str
    xid: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class GpuBackend(Protocol):
    """See the module docstring for the assumptions every implementation keeps."""

    name: str  # "nvml" or "simulated"

    def inventory(self) -> list[GpuDevice]: ...

    def sample(self) -> list[GpuSample]: ...

    def health_events(self) -> list[HealthEvent]:
        """Critical events since the last call (non-blocking)."""
        ...

    def apply_mig_layout(self, index: int, profiles: Sequence[str], keep_uuids: Sequence[str] = ()) -> list[MigDevice]:
        """Make the GPU's MIG instances equal ``profiles`` (a multiset); instances in ``keep_uuids`` must
        survive unchanged or the call fails. Returns the devices now present."""
        ...

    def set_mig_mode(self, index: int, enabled: bool) -> None: ...

    def job_env(self) -> dict[str, str]:
        """Extra environment every job on this backend gets (the simulated backend: ``GPUFLEET_SIM_DIR``)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GpuResetter(Protocol):
    """Optional capability: reset an idle GPU so a pending MIG mode change takes effect.

    The simulated backend has it; on real hosts an operator resets the GPU (``nvidia-smi -r``) or reboots.
    """

    def reset_gpu(self, index: int) -> None: ...
