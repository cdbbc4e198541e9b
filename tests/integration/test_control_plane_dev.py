"""``gpufleet dev``: a local fleet comes up, runs a job, and Ctrl-C stops every process it started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import jobs_pb2_grpc
from tests.helpers.fleet import job_spec

pytestmark = pytest.mark.timeout(90)


def test_dev_fleet_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "gpufleet.common.cli", "dev", "--agents", "2", "--gpus", "H100-80GB:1"]
    args += ["--state-dir", str(tmp_path), "--duration", "60"]
    dev = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert dev.stdout is not None
        while not any(line.startswith("export GPUFLEET_COORDINATOR=") for line in lines):
            line = dev.stdout.readline()
            assert line, f"gpufleet dev ended early: {lines}"
            lines.append(line.strip())
        address = lines[-1].split("=", 1)[1]
        assert any(line.startswith("agent") and "dev-node-2" in line for line in lines)
        children = psutil.Process(dev.pid).children()
        assert len(children) == 3  # one coordinator, two agents
        with grpc.insecure_channel(address) as ch:
            jobs = jobs_pb2_grpc.JobServiceStub(ch)
            deadline = time.monotonic() + 30
            while True:
                try:
                    job = jobs.SubmitJob(jpb.SubmitJobRequest(spec=job_spec(["true"], nodes=1)), timeout=5).job
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            while jobs.GetJob(jpb.GetJobRequest(id=job.id), timeout=5).state != lc.SUCCEEDED:
                assert time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()
                time.sleep(0.2)
            long = jobs.SubmitJob(jpb.SubmitJobRequest(spec=job_spec(["sleep", "300"], nodes=1)), timeout=5).job
            while jobs.GetJob(jpb.GetJobRequest(id=long.id), timeout=5).state != lc.RUNNING:
                assert time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()
                time.sleep(0.2)
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
        leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "300"]]
        assert not [p for p in leftovers if str(tmp_path) in p.environ().get("GPUFLEET_SIM_DIR", "")]
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
