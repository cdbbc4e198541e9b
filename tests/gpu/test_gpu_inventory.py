"""The NVML backend's inventory and samples match what nvidia-smi reports (read-only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.agent.backends.nvml import NvmlBackend
from gpufleet.agent.backends.registry import create_backend


def test_inventory_matches_nvidia_smi(state_dir: Path) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH")
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,name,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    smi = [tuple(x.strip() for x in line.split(",")) for line in out.strip().splitlines()]
    backend = create_backend("nvml", state_dir, node_name="gpu-test")
    assert isinstance(backend, NvmlBackend)
    try:
        inv = backend.inventory()
        assert [(g.uuid, g.product_name, f"{g.memory_mib} MiB") for g in inv] == smi
        for g in inv:
            assert g.model  # catalog name, or NVML's name for unknown devices
            for m in g.mig_devices:
                assert m.uuid.startswith("MIG-") and m.memory_mib > 0
        samples = backend.sample()
        assert [s.uuid for s in samples] == [g.uuid for g in inv]
        for s in samples:
            assert 0 <= s.utilization_pct <= 100 and s.memory_total_mib > 0
            assert 0 <= s.memory_used_mib <= s.memory_total_mib
            assert s.temperature_c > 0 and s.power_mw > 0
        assert isinstance(backend.health_events(), list)
    finally:
        backend.close()
