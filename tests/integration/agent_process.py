"""Run ``gpufleet agent`` as a real subprocess for integration tests (simulated GPUs, loopback only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class AgentProcess:
    def __init__(
        self,
        workdir: Path,
        coordinators: str,
        *,
        name: str = "node-1",
        simulate: str | None = "H100-80GB:2",  # None: the NVML backend (a real GPU host)
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.coordinators = coordinators
        self.name = name
        self.simulate = simulate
        self.extra = extra
        self.env_extra = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"agent.{self.starts}.log"

    def start(self) -> AgentProcess:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_extra)
        argv = [
            sys.executable,
            "-m",
            "gpufleet.common.cli",
            "agent",
            "--coordinator",
            self.coordinators,
            "--name",
            self.name,
            "--state-dir",
            str(self.state_dir),
            *(["--simulate", self.simulate] if self.simulate else []),
            "--address",
            "127.0.0.1",
            "--config",
            str(self._config()),
            *self.extra,
        ]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def _config(self) -> Path:
        path = self.workdir / "agent.toml"
        path.write_text(
            "[connection]\nreconnect_initial_s = 0.1\nreconnect_max_s = 0.5\nrpc_timeout_s = 2.0\n"
            "[jobs]\ncheck_interval_s = 0.1\ndefault_grace_period_s = 2\n"
            "[sharing]\nbusy_sample_interval_s = 0.5\nmemory_grace_s = 0\n"
            '[interruptions]\nprovider = "none"\n'  # never poll a cloud metadata service from tests
        )
        return path

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return "\n".join(
            (self.workdir / f"agent.{i}.log").read_text(errors="replace") for i in range(1, self.starts + 1)
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")
