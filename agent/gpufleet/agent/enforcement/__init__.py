"""Enforcement of GPU sharing: memory limits (MPS + watchdog), time-slicing, MIG. See manager.py."""

from gpufleet.agent.enforcement.config import SharingConfig
from gpufleet.agent.enforcement.manager import GpuSharing, StopJob
from gpufleet.agent.enforcement.usage import JobUsage

__all__ = ["GpuSharing", "JobUsage", "SharingConfig", "StopJob"]
