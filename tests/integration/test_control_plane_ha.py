"""Three coordinators on a real etcd plus simulated agents, all real processes: failover, fencing, outages."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.common.errors import LEADER_METADATA_KEY
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import agent_pb2_grpc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.helpers.etcd_server import EtcdServer, etcd_available
from tests.helpers.fleet import Fleet, job_spec

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not etcd_available(), reason="needs the etcd binary"),
]


def _marking_job(runs: Path, seconds: float) -> pb.JobSpec:
    """A job that records each start and end in runs/<job id> (so we can count how often it ran)."""
    script = (
        f'f={runs}/$GPUFLEET_JOB_ID; echo "start $GPUFLEET_ATTEMPT $(date +%s%N)" >> $f; '
        f'sleep {seconds}; echo "end $GPUFLEET_ATTEMPT $(date +%s%N)" >> $f'
    )
    return job_spec(["sh", "-c", script], gpu_milli=250, nodes=1)


def _placements(job: pb.Job) -> int:
    return sum(1 for t in job.history if t.to_state == lc.SCHEDULED)


def _ha_fleet(factory: Callable[..., Fleet], etcd: EtcdServer, agents: int = 2, **kw: object) -> Fleet:
    fleet = factory(store_url=etcd.url, **kw)
    for name in ("c1", "c2", "c3"):
        fleet.start_coordinator(name)
    for i in range(1, agents + 1):
        fleet.start_agent(f"node-{i}", gpus="H100-80GB:2")
    fleet.wait_nodes(agents)
    return fleet


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "runs"
    d.mkdir()
    yield d


def _assert_ran_once(fleet: Fleet, runs: Path, job_ids: list[str], timeout_s: float = 60) -> None:
    for job_id in job_ids:
        job = fleet.wait_job(job_id, lambda j: j.state in lc.TERMINAL, timeout_s=timeout_s)
        assert job.state == lc.SUCCEEDED, f"{job}\n{fleet.logs()}"
        assert _placements(job) == 1, f"placed more than once: {job}"
        lines = (runs / job_id).read_text().split("\n")
        assert sum(1 for line in lines if line.startswith("start")) == 1, f"{job_id} ran more than once: {lines}"


def test_follower_redirects_clients_and_agents(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
) -> None:
    fleet = _ha_fleet(fleet_factory, fresh_etcd_server, agents=1)
    leader = fleet.leader_address()
    follower = next(a for a in fleet.coordinator_addresses() if a != leader)
    api = fleet.api(follower)
    with pytest.raises(grpc.RpcError) as err:
        api.jobs.SubmitJob(jpb.SubmitJobRequest(spec=job_spec(["true"], nodes=1)), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (LEADER_METADATA_KEY, leader) in tuple(err.value.trailing_metadata() or ())
    # reads are served by followers from the store
    job = fleet.submit(job_spec(["true"], nodes=1)).job
    assert api.jobs.GetJob(jpb.GetJobRequest(id=job.id), timeout=5).id == job.id
    assert len(api.nodes.ListNodes(_nodes_req(), timeout=5).nodes) == 1
    # an agent that reaches a follower is told where the leader is
    stub = agent_pb2_grpc.AgentServiceStub(api.channel)
    first = next(iter(stub.Connect(iter([apb.AgentMessage(register=apb.Register())]), timeout=5)))
    assert first.WhichOneof("body") == "redirect" and first.redirect.leader_address == leader
    # a leader stopped with SIGTERM exits cleanly and resigns: another replica leads at once
    old = fleet.leader()
    t = time.monotonic()
    old.popen.terminate()  # type: ignore[union-attr]
    assert old.popen.wait(15) == 0  # type: ignore[union-attr]
    assert fleet.leader_address(exclude=old.address, timeout_s=10) != old.address
    assert time.monotonic() - t < 10


def _nodes_req() -> object:
    from gpufleet.proto.v1 import nodes_pb2

    return nodes_pb2.ListNodesRequest()


def test_leader_kill_during_submissions_places_every_job_once(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
    runs: Path,
) -> None:
    # agents may spend a few seconds on the dead leader's address before they find the new one
    fleet = _ha_fleet(fleet_factory, fresh_etcd_server, node_timeout_s=20)
    accepted: list[str] = []
    errors: list[BaseException] = []

    def submit_many() -> None:
        try:
            for i in range(24):
                resp = fleet.submit(_marking_job(runs, 0.5), request_id=f"req-{i}")
                accepted.append(resp.job.id)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=submit_many)
    t.start()
    while len(accepted) < 8 and t.is_alive():
        time.sleep(0.05)
    old = fleet.leader()
    old.kill()
    t.join(90)
    assert not errors, errors
    assert len(accepted) == 24 and len(set(accepted)) == 24
    assert fleet.leader_address() != old.address
    _assert_ran_once(fleet, runs, accepted)
    listed = fleet.api().jobs.ListJobs(jpb.ListJobsRequest(page_size=1000), timeout=5).jobs
    assert sorted(j.request_id for j in listed) == sorted(f"req-{i}" for i in range(24))


def test_paused_leader_is_fenced_and_steps_down(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
    runs: Path,
) -> None:
    fleet = _ha_fleet(fleet_factory, fresh_etcd_server, node_timeout_s=10, leader_ttl_s=2)
    before = [fleet.submit(_marking_job(runs, 1)).job.id for _ in range(3)]
    old = fleet.leader()
    old.signal(signal.SIGSTOP)
    new_addr = fleet.leader_address(exclude=old.address, timeout_s=30)
    during = [fleet.submit(_marking_job(runs, 1)).job.id for _ in range(3)]
    time.sleep(1)
    old.signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    while True:  # the woken replica must notice it lost and follow the new leader
        try:
            st = fleet.status(old.address)
            if st.leader_address == new_addr:
                break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        fleet.api(old.address).jobs.SubmitJob(jpb.SubmitJobRequest(spec=_marking_job(runs, 1)), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = [fleet.submit(_marking_job(runs, 1)).job.id for _ in range(3)]
    _assert_ran_once(fleet, runs, before + during + after)


def test_agent_kill_and_restart_keeps_jobs_running(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
    runs: Path,
) -> None:
    fleet = _ha_fleet(
        fleet_factory, fresh_etcd_server, agents=1, node_timeout_s=20
    )  # restart well inside the timeout, even on a loaded machine
    ids = [fleet.submit(_marking_job(runs, 4)).job.id for _ in range(3)]
    for j in ids:
        fleet.wait_job(j, lambda x: x.state == lc.RUNNING)
    fleet.agents["node-1"].kill()
    time.sleep(1)
    fleet.restart_agent("node-1")
    _assert_ran_once(fleet, runs, ids)


def test_all_coordinators_down_then_back_reconciles(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
    runs: Path,
) -> None:
    fleet = _ha_fleet(fleet_factory, fresh_etcd_server, node_timeout_s=10)
    long = [fleet.submit(_marking_job(runs, 14)).job.id for _ in range(2)]
    short = [fleet.submit(_marking_job(runs, 1)).job.id for _ in range(2)]
    for j in long + short:
        fleet.wait_job(j, lambda x: x.state in (lc.RUNNING, lc.SUCCEEDED))
    for p in fleet.coordinators.values():
        p.kill()
    time.sleep(10)  # jobs keep running (the short ones finish) while no coordinator is up
    for name in list(fleet.coordinators):
        fleet.restart_coordinator(name)
    _assert_ran_once(fleet, runs, short + long)


def test_node_gone_past_timeout_requeues_its_jobs(
    fleet_factory: Callable[..., Fleet],
    fresh_etcd_server: EtcdServer,
    runs: Path,
) -> None:
    fleet = _ha_fleet(fleet_factory, fresh_etcd_server, agents=1, node_timeout_s=2)
    job = fleet.submit(_marking_job(runs, 2)).job
    fleet.wait_job(job.id, lambda x: x.state == lc.RUNNING)
    fleet.agents["node-1"].signal(signal.SIGSTOP)  # agent silent; its job process keeps running
    lost = fleet.wait_job(job.id, lambda x: x.state == lc.PENDING and x.attempt == 1, timeout_s=20)
    assert [lc.state_name(t.to_state) for t in lost.history][-2:] == ["LOST", "PENDING"]
    nodes = fleet.api().nodes.ListNodes(_nodes_req(), timeout=5).nodes
    assert nodes[0].state == pb.NODE_STATE_NOT_READY
    fleet.agents["node-1"].signal(signal.SIGCONT)
    done = fleet.wait_job(job.id, lambda x: x.state in lc.TERMINAL, timeout_s=40)
    assert done.state == lc.SUCCEEDED and done.attempt == 2, done
