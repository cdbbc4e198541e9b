"""A real etcd server for tests: ``EtcdServer`` (start/stop/kill/pause/restart) and pytest fixtures.

The server listens on 127.0.0.1 with ports picked at run time, keeps its data in a directory the caller gives
(``tmp_path``), and is always killed when the fixture ends. ``restart()`` keeps port and data, so a client sees
the same cluster come back. To use the fixtures in a test folder, re-export them from its conftest.py::

    # tests/integration/conftest.py
    from tests.helpers.etcd_server import etcd_server, fresh_etcd_server

    __all__ = ["etcd_server", "fresh_etcd_server"]

    # tests/integration/test_failover.py
    async def test_x(etcd_server: EtcdServer, tmp_path: Path) -> None:
        store = open_store(etcd_server.url, tmp_path)   # or start coordinators with --store etcd_server.url

Tests sharing the module-scoped ``etcd_server`` (or the session-scoped ``etcd_session_server``) must use
distinct key prefixes. ``fresh_etcd_server`` is a function-scoped server for tests that kill, restart or pause
it. ``running_etcd(data_dir)`` is the context manager behind them, for fixtures of other scopes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ETCD_BINARY = os.environ.get("GPUFLEET_TEST_ETCD", "/usr/bin/etcd")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One single-member etcd process on loopback (fast election settings, so leases can be as short as 1 s)."""

    def __init__(self, data_dir: Path, *, name: str = "gpufleet-test", binary: str = ETCD_BINARY) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 20.0) -> None:
        """Start etcd (same ports and data as before on a restart) and wait until it serves requests."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"http://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",
            "--heartbeat-interval=50",
            "--election-timeout=500",  # lease minimum TTL = 1.5 x election timeout
            "--logger=zap",
            "--log-level=error",
        ]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; log: {self._log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy in {timeout_s}s; log: {self._log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL at once (a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the process hangs (connections stay open, nothing is answered)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, *, crash: bool = True) -> None:
        """Kill (or stop) and start again on the same port with the same data."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def etcd_available() -> bool:
    return shutil.which(ETCD_BINARY) is not None or Path(ETCD_BINARY).is_file()


requires_etcd = pytest.mark.skipif(not etcd_available(), reason=f"etcd binary {ETCD_BINARY} not found")


@contextlib.contextmanager
def running_etcd(data_dir: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd per test module (use distinct key prefixes per test); killed at the end of the module."""
    if not etcd_available():
        pytest.skip(f"etcd binary {ETCD_BINARY} not found")
    with running_etcd(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def fresh_etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test alone, for tests that kill, restart or pause it."""
    if not etcd_available():
        pytest.skip(f"etcd binary {ETCD_BINARY} not found")
    with running_etcd(tmp_path / "etcd-data") as server:
        yield server


@pytest.fixture(scope="session")
def etcd_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole test session (never kill or pause it; use distinct key prefixes)."""
    if not etcd_available():
        pytest.skip(f"etcd binary {ETCD_BINARY} not found")
    with running_etcd(tmp_path_factory.mktemp("etcd-session") / "data") as server:
        yield server
