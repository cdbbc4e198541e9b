"""Backend registry: a spec string names a factory (``nvml`` or ``simulate:MODEL:COUNT,...``).

Shared code never branches on the backend's name; it asks :func:`create_backend`. Factories import their
backend lazily, so hosts without nvidia-ml-py can still run simulated GPUs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from gpufleet.agent.backends.base import GpuBackend
from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.gpu_models import MODELS

BackendFactory = Callable[[str, Path, str], GpuBackend]
"""``factory(argument after the colon, state_dir, node_name) -> backend``"""


def _simulated(arg: str, state_dir: Path, node_name: str) -> GpuBackend:
    from gpufleet.agent.backends.simulated import SimulatedBackend, parse_topology

    if not arg:
        raise InvalidInputError(Problem("--simulate", _usage("the simulated backend needs a topology")))
    return SimulatedBackend(parse_topology(arg), state_dir, node_name=node_name)


def _nvml(arg: str, state_dir: Path, node_name: str) -> GpuBackend:
    from gpufleet.agent.backends.nvml import NvmlBackend, PynvmlDriver

    if arg:
        raise InvalidInputError(Problem("--gpu-backend", f"'nvml' takes no argument, got {arg!r}"))
    return NvmlBackend(PynvmlDriver(), node_name=node_name, state_dir=state_dir)


BACKENDS: dict[str, BackendFactory] = {
    "nvml": _nvml,
    "simulate": _simulated,
    "simulated": _simulated,
}


def _usage(what: str) -> str:
    return (
        f"{what}; use 'nvml' on a GPU host or '--simulate MODEL:COUNT[,MODEL:COUNT...]' "
        f"(e.g. simulate:H100-80GB:8,L4:2); known models: {', '.join(sorted(MODELS))}"
    )


def create_backend(spec: str, state_dir: Path, *, node_name: str | None = None) -> GpuBackend:
    """``create_backend("simulate:H100-80GB:8,L4:2", state_dir)`` or ``create_backend("nvml", state_dir)``."""
    name, _, arg = spec.strip().partition(":")
    factory = BACKENDS.get(name)
    if factory is None:
        raise InvalidInputError(Problem("--simulate", _usage(f"unknown GPU backend spec {spec!r}")))
    return factory(arg, state_dir, node_name or socket.gethostname())
