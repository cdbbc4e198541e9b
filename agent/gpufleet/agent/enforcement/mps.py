"""One MPS control daemon per GPU that has MPS-mode jobs.

Each daemon gets its own pipe and log directories under ``<state_dir>/mps/<gpu index>/`` and sees only its
GPU (``CUDA_VISIBLE_DEVICES=<gpu uuid>``). Jobs reach it through ``CUDA_MPS_PIPE_DIRECTORY``; their limits
come from ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` and ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (see env.py).
The daemon is started before the first MPS job of a GPU starts and told to quit after the last one leaves.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpufleet.common.errors import BackendError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class MpsDirs:
    pipe: Path
    log: Path


class MpsDaemons:
    def __init__(self, state_dir: Path, binary: str = "nvidia-cuda-mps-control") -> None:
        self.root = state_dir / "mps"
        self.binary = binary
        self._running: dict[int, MpsDirs] = {}

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def dirs(self, gpu_index: int) -> MpsDirs:
        base = self.root / str(gpu_index)
        return MpsDirs(base / "pipe", base / "log")

    def _env(self, gpu_uuid: str, dirs: MpsDirs) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CUDA_VISIBLE_DEVICES=gpu_uuid,
            CUDA_MPS_PIPE_DIRECTORY=str(dirs.pipe),
            CUDA_MPS_LOG_DIRECTORY=str(dirs.log),
        )
        return env

    def ensure(self, gpu_index: int, gpu_uuid: str) -> MpsDirs:
        """Start the GPU's control daemon unless it runs; returns its directories."""
        if gpu_index in self._running:
            return self._running[gpu_index]
        exe = shutil.which(self.binary)
        if exe is None:
            raise BackendError(f"{self.binary} is not on PATH; MPS is unavailable on this host")
        dirs = self.dirs(gpu_index)
        dirs.pipe.mkdir(parents=True, exist_ok=True)
        dirs.log.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(
                [exe, "-d"],
                env=self._env(gpu_uuid, dirs),
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendError(f"could not start the MPS control daemon for GPU {gpu_index}: {e}") from e
        if proc.returncode != 0:
            raise BackendError(
                f"MPS control daemon for GPU {gpu_index} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}; see {dirs.log}/control.log"
            )
        self._running[gpu_index] = dirs
        log.info("MPS control daemon started for GPU %d (pipe %s)", gpu_index, dirs.pipe)
        return dirs

    def running(self, gpu_index: int) -> bool:
        return gpu_index in self._running

    def stop(self, gpu_index: int, gpu_uuid: str) -> None:
        dirs = self._running.pop(gpu_index, None)
        if dirs is None:
            return
        exe = shutil.which(self.binary) or self.binary
        try:
            subprocess.run(
                [exe],
                input="quit\n",
                env=self._env(gpu_uuid, dirs),
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("could not stop the MPS control daemon of GPU %d: %s", gpu_index, e)

    def stop_all(self, uuids: dict[int, str]) -> None:
        for index in list(self._running):
            self.stop(index, uuids.get(index, ""))
