"""The simulated GPU backend: a real implementation of the GpuBackend contract over the catalog in
:mod:`gpufleet.common.gpu_models`, with per-process GPU memory use declared through files (see simfiles.py)."""

from gpufleet.agent.backends.simulated.backend import SimulatedBackend, parse_topology
from gpufleet.agent.backends.simulated.simfiles import SIM_DIR_ENV, SimUse, read_uses, write_use

__all__ = ["SIM_DIR_ENV", "SimUse", "SimulatedBackend", "parse_topology", "read_uses", "write_use"]
