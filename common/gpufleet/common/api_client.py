"""A typed, synchronous client for the coordinator's v1 API (used by the CLI and tests).

Given a list of coordinator addresses it tries each in turn, follows a follower's redirect to the leader
(FAILED_PRECONDITION with trailing metadata ``gpufleet-leader``) by itself, and turns gRPC errors into
gpufleet errors whose messages say which addresses were tried and what to check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from gpufleet.common.errors import (
    LEADER_METADATA_KEY,
    FailedPreconditionError,
    GpuFleetError,
    InvalidInputError,
    NotFoundError,
    Problem,
    UnavailableError,
)
from gpufleet.common.ids import new_request_id
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import cluster_pb2_grpc as cgrpc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import jobs_pb2_grpc as jgrpc
from gpufleet.proto.v1 import nodes_pb2 as npb
from gpufleet.proto.v1 import nodes_pb2_grpc as ngrpc
from gpufleet.proto.v1 import types_pb2 as pb

T = TypeVar("T")
ENV_COORDINATOR = "GPUFLEET_COORDINATOR"
DEFAULT_ADDRESS = "127.0.0.1:7070"


class ApiError(GpuFleetError):
    """A call the coordinator answered with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str, address: str) -> None:
        self.code = code
        self.details = details
        self.address = address
        super().__init__(f"{details} ({code.name} from {address})")


def resolve_addresses(flag: str | None) -> list[str]:
    """``--coordinator`` beats ``GPUFLEET_COORDINATOR``; both take ``host:port[,host:port...]``."""
    raw = flag or os.environ.get(ENV_COORDINATOR) or DEFAULT_ADDRESS
    addrs = [a.strip() for a in raw.split(",") if a.strip()]
    for a in addrs:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidInputError(
                Problem("--coordinator", f"{a!r} is not HOST:PORT; e.g. 127.0.0.1:7070 or c1:7070,c2:7070")
            )
    return addrs


def _leader_hint(err: grpc.RpcError) -> str:
    call = err if isinstance(err, grpc.Call) else None
    if call is None:
        return ""
    for key, value in call.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _map_error(err: grpc.RpcError, address: str) -> GpuFleetError:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else str(err)) or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        problems = []
        for part in details.split("; "):
            field, sep, message = part.partition(": ")
            problems.append(Problem(field, message) if sep and " " not in field else Problem("", part))
        return InvalidInputError(problems)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(details)
    return ApiError(code, details, address)


class ApiClient:
    """One client for JobService, NodeService, ClusterService and CostService. See module docstring."""

    def __init__(self, addresses: Sequence[str] | str | None = None, *, timeout_s: float = 10.0) -> None:
        self.addresses = resolve_addresses(
            addresses if isinstance(addresses, str) or addresses is None else ",".join(addresses)
        )
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = self.addresses[0]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _channel(self, address: str) -> grpc.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)])
            self._channels[address] = ch
        return ch

    def _order(self) -> list[str]:
        rest = [a for a in self.addresses if a != self._preferred]
        return [self._preferred, *rest]

    def _invoke(self, call: Callable[[grpc.Channel, str], T]) -> T:
        """Run ``call(channel, address)`` against the preferred address, failing over and following redirects."""
        tried: list[str] = []
        queue = self._order()
        last: grpc.RpcError | None = None
        hops = 0
        while queue:
            address = queue.pop(0)
            if address in tried:
                continue
            tried.append(address)
            try:
                result = call(self._channel(address), address)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                leader = _leader_hint(err)
                if code == grpc.StatusCode.FAILED_PRECONDITION and leader and leader != address and hops < 3:
                    hops += 1  # a follower named the leader: go there (bounded, so no redirect loop)
                    if leader in tried:
                        tried.remove(leader)
                    queue.insert(0, leader)
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    last = err
                    continue
                raise _map_error(err, address) from None
            self._preferred = address
            return result
        detail = last.details() if isinstance(last, grpc.Call) else "no answer"
        raise UnavailableError(
            f"cannot reach a coordinator at {', '.join(tried)} ({detail}). Check that `gpufleet coordinator` "
            f"is running there and that --coordinator / {ENV_COORDINATOR} names its HOST:PORT."
        )

    def _unary(self, stub_cls: Callable[[grpc.Channel], Any], method: str, request: Any) -> Any:
        return self._invoke(lambda ch, _a: getattr(stub_cls(ch), method)(request, timeout=self.timeout_s))

    def _stream(self, stub_cls: Callable[[grpc.Channel], Any], method: str, request: Any) -> Iterator[Any]:
        """Open a server stream (with failover on open); errors later in the stream are mapped too."""

        def open_(ch: grpc.Channel, _a: str) -> tuple[Iterator[Any], Any]:
            it = getattr(stub_cls(ch), method)(request)
            first = next(it, None)  # surfaces connection and redirect errors here
            return it, first

        it, first = self._invoke(open_)
        if first is not None:
            yield first
        try:
            yield from it
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.CANCELLED:
                return
            raise _map_error(err, self._preferred) from None

    # ---------------------------------------------------------------- jobs
    def submit_job(self, spec: pb.JobSpec, request_id: str | None = None) -> jpb.SubmitJobResponse:
        req = jpb.SubmitJobRequest(spec=spec, request_id=request_id or new_request_id())
        return self._unary(jgrpc.JobServiceStub, "SubmitJob", req)  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> pb.Job:
        return self._unary(jgrpc.JobServiceStub, "GetJob", jpb.GetJobRequest(id=job_id))  # type: ignore[no-any-return]

    def list_jobs(
        self, *, team: str = "", project: str = "", states: Sequence[int] = (), page_size: int = 0
    ) -> list[pb.Job]:
        jobs: list[pb.Job] = []
        token = ""
        while True:
            req = jpb.ListJobsRequest(team=team, project=project, page_size=page_size, page_token=token)
            req.states.extend(pb.JobState.ValueType(s) for s in states)
            resp: jpb.ListJobsResponse = self._unary(jgrpc.JobServiceStub, "ListJobs", req)
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    def cancel_job(self, job_id: str, reason: str = "") -> pb.Job:
        return self._unary(jgrpc.JobServiceStub, "CancelJob", jpb.CancelJobRequest(id=job_id, reason=reason))  # type: ignore[no-any-return]

    def watch_jobs(
        self, *, job_id: str = "", team: str = "", project: str = "", since_revision: int = 0
    ) -> Iterator[pb.JobEvent]:
        req = jpb.WatchJobsRequest(job_id=job_id, team=team, project=project, since_revision=since_revision)
        return self._stream(jgrpc.JobServiceStub, "WatchJobs", req)

    def job_logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int = 0, node_rank: int = 0
    ) -> Iterator[jpb.LogChunk]:
        req = jpb.GetJobLogsRequest(id=job_id, follow=follow, tail_lines=tail_lines, node_rank=node_rank)
        return self._stream(jgrpc.JobServiceStub, "GetJobLogs", req)

    # ---------------------------------------------------------------- nodes
    def list_nodes(self) -> list[pb.Node]:
        resp: npb.ListNodesResponse = self._unary(ngrpc.NodeServiceStub, "ListNodes", npb.ListNodesRequest())
        return list(resp.nodes)

    def get_node(self, name: str) -> pb.Node:
        return self._unary(ngrpc.NodeServiceStub, "GetNode", npb.GetNodeRequest(name=name))  # type: ignore[no-any-return]

    def cordon(self, name: str, reason: str = "") -> pb.Node:
        return self._unary(ngrpc.NodeServiceStub, "CordonNode", npb.CordonNodeRequest(name=name, reason=reason))  # type: ignore[no-any-return]

    def uncordon(self, name: str) -> pb.Node:
        return self._unary(ngrpc.NodeServiceStub, "UncordonNode", npb.UncordonNodeRequest(name=name))  # type: ignore[no-any-return]

    def drain(self, name: str, deadline_s: int = 0, reason: str = "") -> pb.Node:
        req = npb.DrainNodeRequest(name=name, deadline_s=deadline_s, reason=reason)
        return self._unary(ngrpc.NodeServiceStub, "DrainNode", req)  # type: ignore[no-any-return]

    def set_mig_layout(self, node: str, gpu_index: int, profiles: Sequence[str]) -> npb.SetMigLayoutResponse:
        req = npb.SetMigLayoutRequest(node=node, gpu_index=gpu_index, profiles=list(profiles))
        return self._unary(ngrpc.NodeServiceStub, "SetMigLayout", req)  # type: ignore[no-any-return]

    def watch_nodes(self, since_revision: int = 0) -> Iterator[pb.NodeEvent]:
        return self._stream(ngrpc.NodeServiceStub, "WatchNodes", npb.WatchNodesRequest(since_revision=since_revision))

    # ---------------------------------------------------------------- cluster and cost
    def cluster_status(self) -> cpb.ClusterStatus:
        return self._unary(cgrpc.ClusterServiceStub, "GetClusterStatus", cpb.GetClusterStatusRequest())  # type: ignore[no-any-return]

    def list_instances(self) -> list[cpb.CloudInstance]:
        resp: cpb.ListInstancesResponse = self._unary(
            cgrpc.ClusterServiceStub, "ListInstances", cpb.ListInstancesRequest()
        )
        return list(resp.instances)

    def cost_report(self, *, start_ms: int = 0, end_ms: int = 0, group_by: int = 0, team: str = "") -> cpb.CostReport:
        req = cpb.GetCostReportRequest(start_ms=start_ms, end_ms=end_ms, group_by=group_by, team=team)  # type: ignore[arg-type]
        return self._unary(cgrpc.CostServiceStub, "GetCostReport", req)  # type: ignore[no-any-return]

    def set_budget(self, team: str, limit_micros: int, period_s: int) -> cpb.Budget:
        req = cpb.SetBudgetRequest(budget=cpb.Budget(team=team, limit_micros=limit_micros, period_s=period_s))
        return self._unary(cgrpc.CostServiceStub, "SetBudget", req)  # type: ignore[no-any-return]

    def list_budgets(self) -> list[cpb.Budget]:
        resp: cpb.ListBudgetsResponse = self._unary(cgrpc.CostServiceStub, "ListBudgets", cpb.ListBudgetsRequest())
        return list(resp.budgets)
