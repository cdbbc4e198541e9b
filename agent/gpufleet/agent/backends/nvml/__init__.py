"""The NVML backend: driver.py (thin pynvml wrapper), backend.py (logic), fake_driver.py (recorded replay)."""

from gpufleet.agent.backends.nvml.backend import NvmlBackend
from gpufleet.agent.backends.nvml.driver import NvmlDriver, NvmlError, PynvmlDriver

__all__ = ["NvmlBackend", "NvmlDriver", "NvmlError", "PynvmlDriver"]
