"""SharingConfig: the tunables of GPU sharing on one agent (passed to GpuSharing's constructor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpufleet.common.errors import InvalidInputError, Problem


@dataclass(frozen=True, slots=True)
class SharingConfig:
    quantum_ms: int = 200
    """Mean turn length of a time-sliced job. A round on a GPU lasts ``quantum_ms x jobs`` and each job's turn
    in it is proportional to its share (gpu_milli). Shorter: smoother for interactive jobs, but more
    SIGSTOP/SIGCONT switches (each costs the agent ~0.1 ms of kernel time; see bench/agent.py)."""

    min_turn_ms: int = 10
    """No turn is shorter than this (tiny shares get at least this much, then wait longer)."""

    slice_tick_ms: int = 10
    """Turns end on a grid of this many milliseconds, so the slicers of all GPUs switch in one wake-up of
    the agent (fewer wake-ups, less CPU); rounding errors are paid back at the next turn. 0: no grid."""

    busy_sample_interval_s: float = 1.0
    """Telemetry / memory-watchdog period while at least one job is attached."""

    idle_sample_interval_s: float = 10.0
    """Telemetry period while no job is attached."""

    memory_grace_s: float = 2.0
    """How long a job may stay above its GPU memory limit before it is stopped (0: at the first sample)."""

    mps: Literal["auto", "on", "off"] = "auto"
    """``auto``: MPS-mode assignments run under an MPS control daemon where MPS is available (NVML backend and
    the control binary on PATH), else they fall back to time-slicing + watchdog. ``on``: same, but an MPS
    assignment fails where MPS is unavailable. ``off``: never start MPS."""

    mps_for_shared: bool = False
    """Also run SHARED-mode fractions under MPS (no time-slicing) where MPS is available."""

    mps_control_binary: str = "nvidia-cuda-mps-control"
    """The MPS control program (looked up on PATH)."""

    def __post_init__(self) -> None:
        problems = []
        if self.quantum_ms < 1:
            problems.append(Problem("sharing.quantum_ms", "must be >= 1 (milliseconds)"))
        if not 1 <= self.min_turn_ms <= max(1, self.quantum_ms):
            problems.append(Problem("sharing.min_turn_ms", "must be between 1 and quantum_ms"))
        if not 0 <= self.slice_tick_ms <= self.min_turn_ms:
            problems.append(Problem("sharing.slice_tick_ms", "must be between 0 and min_turn_ms"))
        if self.busy_sample_interval_s <= 0 or self.idle_sample_interval_s <= 0:
            problems.append(Problem("sharing.busy_sample_interval_s", "sampling intervals must be > 0 seconds"))
        if self.idle_sample_interval_s < self.busy_sample_interval_s:
            problems.append(Problem("sharing.idle_sample_interval_s", "must be >= busy_sample_interval_s"))
        if self.memory_grace_s < 0:
            problems.append(Problem("sharing.memory_grace_s", "must be >= 0 seconds"))
        if self.mps not in ("auto", "on", "off"):
            problems.append(Problem("sharing.mps", f"must be auto, on or off, not {self.mps!r}"))
        if problems:
            raise InvalidInputError(problems)
