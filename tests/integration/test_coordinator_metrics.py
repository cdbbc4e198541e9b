"""The coordinator's Prometheus endpoint reports leadership, nodes and jobs by state, and GPU allocation."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from gpufleet.common import lifecycle as lc
from tests.helpers.fleet import Fleet, job_spec

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("gpufleet_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_leader_exports_fleet_state(fleet_factory: Callable[..., Fleet]) -> None:
    port = _free_port()
    fleet = fleet_factory(
        extra_env={
            "GPUFLEET_COORDINATOR__SERVER__METRICS_PORT": str(port),
            "GPUFLEET_COORDINATOR__SERVER__METRICS_HOST": "127.0.0.1",
        }
    )
    fleet.start_coordinator("c1")
    fleet.start_agent("node-1", gpus="H100-80GB:2")
    fleet.wait_nodes(1)
    job = fleet.submit(job_spec(["sleep", "30"], nodes=1, gpu_milli=1000)).job
    fleet.wait_job(job.id, lambda j: j.state == lc.RUNNING)
    deadline = time.monotonic() + 15
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = _scrape(port)
        if m.get('gpufleet_jobs{state="RUNNING"}') == 1.0:
            break
        time.sleep(0.5)
    assert m["gpufleet_coordinator_leader"] == 1.0
    assert m['gpufleet_nodes{state="READY"}'] == 1.0
    assert m['gpufleet_jobs{state="RUNNING"}'] == 1.0
    assert m["gpufleet_gpu_capacity_milli"] == 2000.0 and m["gpufleet_gpu_allocated_milli"] == 1000.0
