"""One coordinator (embedded store) and simulated agents, all real processes on loopback: the core job path."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.helpers.fleet import Fleet, fleet_factory, job_spec  # noqa: F401

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:  # noqa: F811
    f = fleet_factory()
    f.start_coordinator("c1")
    f.start_agent("node-1", gpus="H100-80GB:2")
    f.start_agent("node-2", gpus="H100-80GB:2")
    f.wait_nodes(2)
    return f


def _states(job: pb.Job) -> list[str]:
    return [lc.state_name(t.to_state) for t in job.history]


def test_jobs_run_and_succeed_and_failures_say_why(fleet: Fleet) -> None:
    ok = [fleet.submit(job_spec(["sh", "-c", "echo hello; sleep 0.5"], nodes=1)).job for _ in range(5)]
    bad = fleet.submit(
        job_spec(["sh", "-c", "echo boom >&2; exit 3"], nodes=1, restart_policy=pb.RESTART_POLICY_NEVER)
    ).job
    for j in ok:
        done = fleet.wait_job(j.id, lambda x: x.state in lc.TERMINAL)
        assert done.state == lc.SUCCEEDED, done
        assert _states(done) == ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]
        assert done.assignments[0].node in ("node-1", "node-2")
    failed = fleet.wait_job(bad.id, lambda x: x.state in lc.TERMINAL)
    assert failed.state == lc.FAILED and failed.exit_code == 3, failed
    logs = b"".join(c.data for c in fleet.api().jobs.GetJobLogs(jpb.GetJobLogsRequest(id=ok[0].id), timeout=10))
    assert b"hello" in logs


def test_pending_job_says_why_it_is_not_placed(fleet: Fleet) -> None:
    job = fleet.submit(job_spec(["true"], gpu_milli=16000, nodes=1)).job
    pending = fleet.wait_job(job.id, lambda x: bool(x.message))
    assert pending.state == lc.PENDING and pending.reason == "UNSCHEDULABLE", pending
    assert pending.message


def test_submit_is_idempotent_under_retries(fleet: Fleet) -> None:
    spec = job_spec(["true"], nodes=1)
    first = fleet.submit(spec, request_id="retry-me")
    again = [fleet.submit(spec, request_id="retry-me") for _ in range(5)]
    assert first.created and not any(r.created for r in again)
    assert {r.job.id for r in again} == {first.job.id}
    listed = fleet.api().jobs.ListJobs(jpb.ListJobsRequest(team="ml"), timeout=5).jobs
    assert sum(1 for j in listed if j.request_id == "retry-me") == 1


def test_invalid_spec_is_rejected_with_the_field_path(fleet: Fleet) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fleet.api().jobs.SubmitJob(jpb.SubmitJobRequest(spec=pb.JobSpec(name="x", nodes=1)), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.command" in (err.value.details() or "")


def test_cancel_stops_the_whole_process_group(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "pgid"
    prog = (
        "import os, subprocess, time; subprocess.Popen(['sleep', '300']); "
        f"open({str(marker)!r}, 'w').write(str(os.getpgid(0))); time.sleep(300)"
    )
    job = fleet.submit(job_spec([sys.executable, "-c", prog], nodes=1)).job
    fleet.wait_job(job.id, lambda x: x.state == lc.RUNNING)
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.1)
    pgid = int(marker.read_text())
    cancelled = fleet.api().jobs.CancelJob(jpb.CancelJobRequest(id=job.id, reason="test"), timeout=5)
    assert cancelled.state == lc.CANCELLED
    deadline = time.monotonic() + 15
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"process group {pgid} still alive\n{fleet.logs()}"
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        fleet.api().jobs.CancelJob(jpb.CancelJobRequest(id="j-nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
