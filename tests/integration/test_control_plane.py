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
from tests.helpers.fleet import Fleet, job_spec

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
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


def test_health_reflection_status_and_watch(fleet: Fleet) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from gpufleet.proto.v1 import cluster_pb2 as cpb

    api = fleet.api()
    health = health_pb2_grpc.HealthStub(api.channel)
    for service in ("", "gpufleet.v1.JobService", "gpufleet.v1.AgentService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    answer = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {s.name for s in answer.list_services_response.service}
    assert {"gpufleet.v1.JobService", "gpufleet.v1.NodeService", "gpufleet.v1.CostService"} <= names

    first = fleet.submit(job_spec(["true"], nodes=1, team="watch")).job
    events = api.jobs.WatchJobs(jpb.WatchJobsRequest(team="watch"), timeout=20)
    seen: list[pb.JobEvent] = []
    for ev in events:
        seen.append(ev)
        if ev.job.state == lc.SUCCEEDED:
            break
    assert seen[0].type == pb.JobEvent.TYPE_ADDED and seen[0].job.id == first.id
    # resume from a revision: only what happened after it, the next job included
    second = fleet.submit(job_spec(["true"], nodes=1, team="watch")).job
    resumed = api.jobs.WatchJobs(jpb.WatchJobsRequest(team="watch", since_revision=seen[-1].revision), timeout=20)
    ev = next(iter(resumed))
    assert ev.job.id == second.id and ev.type == pb.JobEvent.TYPE_ADDED
    resumed.cancel()
    fleet.wait_job(second.id, lambda j: j.state == lc.SUCCEEDED)

    status = api.cluster.GetClusterStatus(cpb.GetClusterStatusRequest(), timeout=5)
    assert status.leader_address == api.address and status.store.healthy and status.store.kind == "embedded"
    assert status.nodes_by_state["READY"] == 2 and status.jobs_by_state["SUCCEEDED"] >= 2
    assert [r.id for r in status.replicas] == ["c1"] and status.replicas[0].leader

    from gpufleet.proto.v1 import nodes_pb2 as npb

    node_events = api.nodes.WatchNodes(npb.WatchNodesRequest(), timeout=10)
    first_two = [next(node_events), next(node_events)]
    node_events.cancel()
    assert sorted(e.node.inventory.name for e in first_two) == ["node-1", "node-2"]
    assert all(e.type == pb.NodeEvent.TYPE_ADDED for e in first_two)

    # paging
    for _ in range(3):
        fleet.submit(job_spec(["true"], nodes=1, team="paging"))
    page1 = api.jobs.ListJobs(jpb.ListJobsRequest(team="paging", page_size=2), timeout=5)
    page2 = api.jobs.ListJobs(jpb.ListJobsRequest(team="paging", page_size=2, page_token=page1.next_page_token))
    assert len(page1.jobs) == 2 and len(page2.jobs) == 1 and not page2.next_page_token
    assert {j.id for j in page1.jobs}.isdisjoint({j.id for j in page2.jobs})
    with pytest.raises(grpc.RpcError) as err:
        api.jobs.ListJobs(jpb.ListJobsRequest(page_size=5000), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in (err.value.details() or "")


def test_cordon_drain_mig_and_cost(fleet: Fleet) -> None:
    from gpufleet.proto.v1 import cluster_pb2 as cpb
    from gpufleet.proto.v1 import nodes_pb2 as npb

    api = fleet.api()
    node = api.nodes.CordonNode(npb.CordonNodeRequest(name="node-1", reason="test"), timeout=5)
    assert node.cordoned
    jobs = [fleet.submit(job_spec(["sleep", "30"], nodes=1, preemptible=True)).job for _ in range(2)]
    placed = [fleet.wait_job(j.id, lambda x: x.state == lc.RUNNING) for j in jobs]
    assert {p.assignments[0].node for p in placed} == {"node-2"}  # the cordoned node gets nothing new
    api.nodes.UncordonNode(npb.UncordonNodeRequest(name="node-1"), timeout=5)
    drained = api.nodes.DrainNode(npb.DrainNodeRequest(name="node-2", deadline_s=30, reason="maint"), timeout=5)
    assert drained.state == pb.NODE_STATE_DRAINING and drained.cordoned
    moved = [fleet.wait_job(j.id, lambda x: x.state == lc.RUNNING and x.attempt == 2) for j in jobs]
    assert {m.assignments[0].node for m in moved} == {"node-1"}
    assert any(t.reason == "NODE_DRAINED" for t in moved[0].history)
    deadline = time.monotonic() + 15
    while api.nodes.GetNode(npb.GetNodeRequest(name="node-2"), timeout=5).state != pb.NODE_STATE_DRAINED:
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        api.nodes.SetMigLayout(npb.SetMigLayoutRequest(node="node-1", gpu_index=0, profiles=["7g.80gb"] * 2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for j in jobs:
        api.jobs.CancelJob(jpb.CancelJobRequest(id=j.id), timeout=5)

    report = api.cost.GetCostReport(cpb.GetCostReportRequest(group_by=cpb.COST_GROUP_BY_JOB), timeout=5)
    assert {r.key for r in report.rows} >= {j.id for j in jobs} and report.total_cost_micros > 0
    budget = api.cost.SetBudget(cpb.SetBudgetRequest(budget=cpb.Budget(team="ml", limit_micros=1, period_s=3600)))
    assert budget.spent_micros > 0
    assert [b.team for b in api.cost.ListBudgets(cpb.ListBudgetsRequest(), timeout=5).budgets] == ["ml"]
    with pytest.raises(grpc.RpcError) as err:
        api.cost.SetBudget(cpb.SetBudgetRequest(budget=cpb.Budget(team="ml", limit_micros=1)), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "period_s" in (err.value.details() or "")


def test_follow_logs_until_the_job_ends(fleet: Fleet) -> None:
    job = fleet.submit(job_spec(["sh", "-c", "echo first; sleep 1.5; echo second"], nodes=1)).job
    fleet.wait_job(job.id, lambda x: x.state == lc.RUNNING)
    chunks = list(fleet.api().jobs.GetJobLogs(jpb.GetJobLogsRequest(id=job.id, follow=True), timeout=30))
    data = b"".join(c.data for c in chunks)
    assert b"first" in data and b"second" in data, chunks
    assert chunks[-1].eof
    assert fleet.get_job(job.id).state == lc.SUCCEEDED


def test_gang_job_runs_on_two_nodes_and_succeeds_when_both_ranks_do(fleet: Fleet) -> None:
    script = 'echo "rank=$NODE_RANK world=$WORLD_SIZE nnodes=$NNODES master=$MASTER_ADDR:$MASTER_PORT"; sleep 1'
    job = fleet.submit(job_spec(["sh", "-c", script], gpu_milli=2000, nodes=2, name="gang")).job
    done = fleet.wait_job(job.id, lambda x: x.state in lc.TERMINAL)
    assert done.state == lc.SUCCEEDED, done
    assert sorted(a.node for a in done.assignments) == ["node-1", "node-2"]
    assert _states(done) == ["PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    for rank in (0, 1):
        req = jpb.GetJobLogsRequest(id=job.id, node_rank=rank)
        out = b"".join(c.data for c in fleet.api().jobs.GetJobLogs(req, timeout=10)).decode()
        assert f"rank={rank}" in out and "nnodes=2" in out, out


def test_mig_layout_then_a_mig_job_runs_on_a_slice(fleet: Fleet) -> None:
    from gpufleet.proto.v1 import nodes_pb2 as npb

    api = fleet.api()
    req = npb.SetMigLayoutRequest(node="node-1", gpu_index=0, profiles=["3g.40gb", "3g.40gb"])
    resp = api.nodes.SetMigLayout(req, timeout=30)
    assert resp.accepted, resp
    gpu = api.nodes.GetNode(npb.GetNodeRequest(name="node-1"), timeout=5).inventory.gpus[0]
    assert gpu.mig_mode == pb.MIG_MODE_ENABLED and [m.profile for m in gpu.mig_instances] == ["3g.40gb"] * 2
    spec = job_spec(["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], gpu_milli=0, nodes=1)
    spec.resources.mig_profile = "3g.40gb"
    done = fleet.wait_job(fleet.submit(spec).job.id, lambda j: j.state in lc.TERMINAL)
    assert done.state == lc.SUCCEEDED, done
    device = done.assignments[0].devices[0]
    assert done.assignments[0].node == "node-1" and device.mode == pb.SHARING_MODE_MIG
    logs = b"".join(c.data for c in api.jobs.GetJobLogs(jpb.GetJobLogsRequest(id=done.id), timeout=10))
    assert device.mig_device_uuid.encode() in logs
    # a MIG-enabled GPU without a fitting slice: the scheduler asks the agent for one, then places the job
    api.nodes.SetMigLayout(npb.SetMigLayoutRequest(node="node-2", gpu_index=0, profiles=[]), timeout=30)
    small = job_spec(["true"], gpu_milli=0, nodes=1)
    small.resources.mig_profile = "1g.10gb"
    done = fleet.wait_job(fleet.submit(small).job.id, lambda j: j.state in lc.TERMINAL)
    assert done.state == lc.SUCCEEDED and done.assignments[0].node == "node-2", done
    gpu = api.nodes.GetNode(npb.GetNodeRequest(name="node-2"), timeout=5).inventory.gpus[0]
    assert [m.profile for m in gpu.mig_instances] == ["1g.10gb"]


def test_high_priority_job_preempts_preemptible_work(fleet: Fleet) -> None:
    low = [
        fleet.submit(job_spec(["sleep", "60"], nodes=1, priority="low", preemptible=True, team="batch")).job
        for _ in range(4)
    ]
    for j in low:
        fleet.wait_job(j.id, lambda x: x.state == lc.RUNNING)
    urgent = fleet.submit(job_spec(["true"], nodes=1, priority="critical", team="prod")).job
    done = fleet.wait_job(urgent.id, lambda x: x.state in lc.TERMINAL)
    assert done.state == lc.SUCCEEDED, done
    victims = [fleet.get_job(j.id) for j in low]
    preempted = [v for v in victims if any(t.to_state == lc.PREEMPTED for t in v.history)]
    assert len(preempted) >= 1, victims
    edge = next(t for t in preempted[0].history if t.to_state == lc.PREEMPTED)
    assert urgent.id in edge.message, edge
    for j in low:
        fleet.api().jobs.CancelJob(jpb.CancelJobRequest(id=j.id), timeout=5)


def test_high_priority_gang_preempts_on_both_nodes_and_runs(fleet: Fleet) -> None:
    low = [
        fleet.submit(job_spec(["sleep", "60"], nodes=1, priority="low", preemptible=True, team="batch")).job
        for _ in range(4)
    ]
    for j in low:
        fleet.wait_job(j.id, lambda x: x.state == lc.RUNNING)
    gang = fleet.submit(job_spec(["true"], gpu_milli=2000, nodes=2, priority="critical", name="train")).job
    done = fleet.wait_job(gang.id, lambda x: x.state in lc.TERMINAL)
    assert done.state == lc.SUCCEEDED, done
    assert sorted(a.node for a in done.assignments) == ["node-1", "node-2"]
    victims = [fleet.get_job(j.id) for j in low]
    for v in victims:  # the gang needed every GPU of both nodes: all four went, each told why
        edge = next(t for t in v.history if t.to_state == lc.PREEMPTED)
        assert gang.id in edge.message, edge
    for j in low:
        fleet.api().jobs.CancelJob(jpb.CancelJobRequest(id=j.id), timeout=5)


def test_job_whose_deadline_passed_fails_and_says_why(fleet: Fleet) -> None:
    spec = job_spec(["true"], nodes=1, deadline_ms=int(time.time() * 1000) + 300)
    spec.resources.gpu_milli = 64000  # cannot fit before its deadline
    job = fleet.submit(spec).job
    failed = fleet.wait_job(job.id, lambda j: j.state in lc.TERMINAL)
    assert failed.state == lc.FAILED and failed.reason == "DEADLINE_EXCEEDED", failed
    assert "deadline" in failed.message


def test_job_over_its_gpu_memory_limit_fails_with_the_agents_reason(fleet: Fleet) -> None:
    prog = [sys.executable, "-m", "gpufleet.agent.backends.simulated.use", "--mib", "60000", "--seconds", "30"]
    spec = job_spec(prog, gpu_milli=500, nodes=1, restart_policy=pb.RESTART_POLICY_NEVER)
    job = fleet.submit(spec).job
    failed = fleet.wait_job(job.id, lambda j: j.state in lc.TERMINAL, timeout_s=40)
    assert failed.state == lc.FAILED and failed.reason == "GPU_MEMORY_LIMIT_EXCEEDED", failed
    assert failed.message


def test_finished_jobs_are_removed_after_retention_and_their_cost_stays(fleet_factory: Callable[..., Fleet]) -> None:
    from gpufleet.proto.v1 import cluster_pb2 as cpb

    f = fleet_factory(
        extra_env={"GPUFLEET_COORDINATOR__JOBS__RETENTION_S": "1", "GPUFLEET_COORDINATOR__JOBS__GC_INTERVAL_S": "0.2"}
    )
    f.start_coordinator("c1")
    f.start_agent("node-1", gpus="H100-80GB:1")
    f.wait_nodes(1)
    api = f.api()
    job = f.submit(job_spec(["sleep", "1"], nodes=1, team="vision", project="cats")).job
    assert f.wait_job(job.id, lambda x: x.state in lc.TERMINAL).state == lc.SUCCEEDED
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            api.jobs.GetJob(jpb.GetJobRequest(id=job.id), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"job {job.id} was never removed")
    assert job.id not in {j.id for j in api.jobs.ListJobs(jpb.ListJobsRequest(), timeout=5).jobs}
    report = api.cost.GetCostReport(cpb.GetCostReportRequest(group_by=cpb.COST_GROUP_BY_PROJECT), timeout=5)
    rows = {r.key: r for r in report.rows}
    assert rows["vision/cats"].cost_micros > 0 and rows["vision/cats"].jobs == 1, report
