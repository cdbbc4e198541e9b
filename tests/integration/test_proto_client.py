"""A client generated from proto/ alone (not our Python package) can call every RPC of the v1 API.

The .proto files are compiled into a temporary folder with grpc_tools.protoc, and a separate interpreter
that cannot see the repo's generated package imports only that output and calls each service of a real
coordinator process over a real socket. No RPC may answer UNIMPLEMENTED.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"

CLIENT = textwrap.dedent(
    """
    import json, sys
    proto_root, out, address = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path = [out] + [p for p in sys.path if p.rstrip("/") != proto_root.rstrip("/")]
    import grpc
    from gpufleet.proto.v1 import types_pb2, jobs_pb2, jobs_pb2_grpc, nodes_pb2, nodes_pb2_grpc
    from gpufleet.proto.v1 import cluster_pb2, cluster_pb2_grpc, agent_pb2, agent_pb2_grpc
    assert jobs_pb2.__file__.startswith(out), jobs_pb2.__file__
    ch = grpc.insecure_channel(address)
    grpc.channel_ready_future(ch).result(timeout=20)
    results = {}

    def call(name, fn):
        try:
            value = fn()
            results[name] = "OK"
            return value
        except grpc.RpcError as err:
            results[name] = err.code().name
            return None

    jobs = jobs_pb2_grpc.JobServiceStub(ch)
    nodes = nodes_pb2_grpc.NodeServiceStub(ch)
    cluster = cluster_pb2_grpc.ClusterServiceStub(ch)
    cost = cluster_pb2_grpc.CostServiceStub(ch)
    agents = agent_pb2_grpc.AgentServiceStub(ch)

    # an agent registers through the bidirectional stream
    inv = types_pb2.NodeInventory(name="proto-node", hostname="h", address="127.0.0.1", cpu_milli=8000,
        memory_mib=32768, gpu_backend="simulated",
        gpus=[types_pb2.Gpu(index=0, uuid="GPU-proto-0", model="L4", memory_mib=23034, healthy=True)])
    def connect():
        stream = agents.Connect(iter([agent_pb2.AgentMessage(seq=1, register=agent_pb2.Register(inventory=inv, agent_id="x"))]), timeout=5)
        first = next(stream)
        stream.cancel()
        return first
    first = call("AgentService.Connect", connect)
    results["AgentService.Connect.first"] = first.WhichOneof("body") if first is not None else None

    spec = types_pb2.JobSpec(name="proto-job", team="t", project="p", command=["true"],
        resources=types_pb2.Resources(gpu_milli=0), nodes=1)
    sub = call("JobService.SubmitJob", lambda: jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec, request_id="r1"), timeout=10))
    again = call("JobService.SubmitJob.retry", lambda: jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec, request_id="r1"), timeout=10))
    results["idempotent"] = bool(sub and again and sub.job.id == again.job.id and not again.created)
    job_id = sub.job.id if sub else "missing"
    call("JobService.GetJob", lambda: jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=10))
    call("JobService.ListJobs", lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(team="t"), timeout=10))
    call("JobService.WatchJobs", lambda: next(jobs.WatchJobs(jobs_pb2.WatchJobsRequest(job_id=job_id), timeout=10)))
    call("JobService.GetJobLogs", lambda: list(jobs.GetJobLogs(jobs_pb2.GetJobLogsRequest(id=job_id), timeout=10)))
    call("JobService.CancelJob", lambda: jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job_id), timeout=10))
    bad = types_pb2.JobSpec(name="Bad Name", command=[])
    call("JobService.SubmitJob.invalid", lambda: jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=bad, request_id="r2"), timeout=10))

    call("NodeService.ListNodes", lambda: nodes.ListNodes(nodes_pb2.ListNodesRequest(), timeout=10))
    call("NodeService.GetNode", lambda: nodes.GetNode(nodes_pb2.GetNodeRequest(name="proto-node"), timeout=10))
    call("NodeService.CordonNode", lambda: nodes.CordonNode(nodes_pb2.CordonNodeRequest(name="proto-node"), timeout=10))
    call("NodeService.UncordonNode", lambda: nodes.UncordonNode(nodes_pb2.UncordonNodeRequest(name="proto-node"), timeout=10))
    call("NodeService.DrainNode", lambda: nodes.DrainNode(nodes_pb2.DrainNodeRequest(name="proto-node", deadline_s=1), timeout=10))
    call("NodeService.WatchNodes", lambda: next(nodes.WatchNodes(nodes_pb2.WatchNodesRequest(), timeout=10)))
    call("NodeService.SetMigLayout", lambda: nodes.SetMigLayout(nodes_pb2.SetMigLayoutRequest(node="proto-node", gpu_index=0, profiles=["1g.10gb"]), timeout=10))
    call("ClusterService.GetClusterStatus", lambda: cluster.GetClusterStatus(cluster_pb2.GetClusterStatusRequest(), timeout=10))
    call("ClusterService.ListInstances", lambda: cluster.ListInstances(cluster_pb2.ListInstancesRequest(), timeout=10))
    call("CostService.GetCostReport", lambda: cost.GetCostReport(cluster_pb2.GetCostReportRequest(), timeout=10))
    call("CostService.SetBudget", lambda: cost.SetBudget(cluster_pb2.SetBudgetRequest(budget=cluster_pb2.Budget(team="t", limit_micros=10**9, period_s=86400)), timeout=10))
    call("CostService.ListBudgets", lambda: cost.ListBudgets(cluster_pb2.ListBudgetsRequest(), timeout=10))
    print(json.dumps(results))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def coordinator(tmp_path: Path) -> object:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpufleet.common.cli",
            "coordinator",
            "--listen",
            f"127.0.0.1:{port}",
            "--store",
            "embedded",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_generated_client_calls_every_service(tmp_path: Path, coordinator: str) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "gpufleet/proto/v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        check=True,
        cwd=PROTO,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    proc = None
    while time.monotonic() < deadline:
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, str(PROTO), str(out), coordinator],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0:
            break
        time.sleep(0.5)
    assert proc is not None and proc.returncode == 0, proc.stderr if proc else ""
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    unimplemented = [name for name, code in results.items() if code == "UNIMPLEMENTED"]
    assert not unimplemented, unimplemented
    assert results["AgentService.Connect.first"] == "ack"
    for name in (
        "JobService.SubmitJob",
        "JobService.GetJob",
        "JobService.ListJobs",
        "JobService.CancelJob",
        "NodeService.ListNodes",
        "NodeService.GetNode",
        "ClusterService.GetClusterStatus",
        "CostService.GetCostReport",
        "CostService.SetBudget",
        "CostService.ListBudgets",
    ):
        assert results[name] == "OK", (name, results[name])
    assert results["idempotent"] is True
    assert results["JobService.SubmitJob.invalid"] == "INVALID_ARGUMENT"
