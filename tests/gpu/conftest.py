"""Real-GPU checks (``-m gpu``). Skipped, with the reason, where NVML cannot be initialised.

They READ device settings only: nothing here changes MIG mode, clocks, compute mode or any other setting
(MPS daemons are ordinary processes, started and stopped by the test). The job subprocesses import torch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _nvml_reason() -> str:
    try:
        import pynvml
    except ImportError as e:
        return f"nvidia-ml-py is not installed ({e})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"pynvml.nvmlInit() failed: {e} (no NVIDIA driver/GPU on this host)"
    pynvml.nvmlShutdown()
    return ""


NVML_SKIP = _nvml_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.gpu)
            if NVML_SKIP:
                item.add_marker(pytest.mark.skip(reason=NVML_SKIP))


@pytest.fixture
def torch_python() -> str:
    """A Python that can import torch with CUDA (this one, or skip saying why)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; assert torch.cuda.is_available(); print(torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"torch with CUDA is not importable by {sys.executable}: {probe.stderr.strip()[-300:]}")
    return sys.executable


@pytest.fixture
def mps_binary() -> str:
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        pytest.skip("nvidia-cuda-mps-control is not on PATH (MPS unavailable on this host)")
    return exe


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    d.mkdir()
    yield d
