"""The leader's state logic on a real embedded store and a real elector (in one process, no gRPC):
submissions, agent reconciliation, node liveness, drain and cost accounting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import FakeClock
from gpufleet.coordinator.config import AgentsConfig, CostConfig, LivenessConfig
from gpufleet.coordinator.leadership import LeaderElector
from gpufleet.coordinator.state import job_rules, keys
from gpufleet.coordinator.state.costs import PRICE_LABEL, CostAccountant
from gpufleet.coordinator.state.fleet import FleetView, copy_job
from gpufleet.coordinator.state.jobs import JobManager
from gpufleet.coordinator.state.liveness import LivenessChecker
from gpufleet.coordinator.state.nodes import NodeManager
from gpufleet.coordinator.state.reconcile import AgentReconciler
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.coordinator.state.stopping import StopTracker
from gpufleet.coordinator.store.embedded import EmbeddedStore
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb


@dataclass
class Leader:
    store: EmbeddedStore
    clock: FakeClock
    view: FleetView
    sessions: AgentSessions
    jobs: JobManager
    nodes: NodeManager
    reconciler: AgentReconciler
    liveness: LivenessChecker
    stops: StopTracker


@pytest.fixture
async def leader(tmp_path: Path) -> AsyncIterator[Leader]:
    store = EmbeddedStore(tmp_path / "store.db")
    elector = LeaderElector(store, identity="t1", address="127.0.0.1:1", ttl_s=3)
    task = asyncio.create_task(elector.run())
    for _ in range(100):
        if elector.is_leader:
            break
        await asyncio.sleep(0.02)
    assert elector.is_leader
    clock = FakeClock()
    view = FleetView(store, elector)
    await view.load()
    sessions = AgentSessions(view, AgentsConfig(), clock)
    view.listeners.append(sessions)
    stops = StopTracker(clock, 30)
    liveness = LivenessChecker(view, sessions, LivenessConfig(node_timeout_s=5, failover_grace_s=20), clock, stops)
    liveness.start()
    try:
        yield Leader(
            store,
            clock,
            view,
            sessions,
            JobManager(view, clock),
            NodeManager(view, clock, 60, stops),
            AgentReconciler(view, sessions, clock, stops),
            liveness,
            stops,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


def _spec(**kw: object) -> pb.JobSpec:
    spec = pb.JobSpec(name="t", team="ml", project="p", command=["true"], nodes=1, **kw)  # type: ignore[arg-type]
    spec.resources.gpu_milli = 1000
    return spec


def _inventory(name: str = "n1", gpus: int = 2) -> pb.NodeInventory:
    inv = pb.NodeInventory(name=name, address="127.0.0.1")
    for i in range(gpus):
        inv.gpus.append(pb.Gpu(index=i, uuid=f"GPU-{name}-{i}", model="H100-80GB", memory_mib=81920, healthy=True))
    return inv


async def _placed_on(ld: Leader, node: str, **kw: object) -> pb.Job:
    job, _ = await ld.jobs.submit(_spec(**kw), "")
    j = copy_job(ld.view.job(job.id))
    job_rules.place(j, [pb.TaskAssignment(node=node)], now_ms=ld.clock.now_ms())
    assert await ld.view.commit(jobs=[j])
    return ld.view.job(job.id)


async def test_concurrent_retries_of_one_request_create_one_job(leader: Leader) -> None:
    results = await asyncio.gather(*[leader.jobs.submit(_spec(), "req-1") for _ in range(6)])
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    kvs, _ = await leader.store.range(keys.JOBS)
    assert len(kvs) == 1


async def test_many_concurrent_submissions_all_land(leader: Leader) -> None:
    results = await asyncio.gather(*[leader.jobs.submit(_spec(), f"r{i}") for i in range(100)])
    assert all(created for _, created in results)
    kvs, _ = await leader.store.range(keys.JOBS)
    reqs, _ = await leader.store.range(keys.REQUESTS)
    assert len(kvs) == 100 and len(reqs) == 100


async def test_agent_reports_move_a_job_to_running_then_succeeded(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    job = await _placed_on(leader, "n1")
    session = leader.sessions.open("n1", "agent-1")
    desired = leader.sessions.desired_state("n1", session.acked_exits)
    assert [d.job_id for d in desired.jobs] == [job.id]
    running = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_RUNNING)
    await leader.reconciler.on_register(session, [running])
    assert leader.view.job(job.id).state == lc.RUNNING
    exited = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_EXITED, reason="SUCCEEDED")
    await leader.reconciler.on_jobs(session, [exited], full=False)
    assert leader.view.job(job.id).state == lc.SUCCEEDED
    desired = leader.sessions.desired_state("n1", session.acked_exits)
    assert not desired.jobs and list(desired.acknowledged_exits) == [job.id]
    stored = keys.job_from_kv(await leader.store.get(keys.job_key(job.id)))  # type: ignore[arg-type]
    assert stored.state == lc.SUCCEEDED


async def test_running_job_missing_from_register_is_lost_and_requeued(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    job = await _placed_on(leader, "n1")
    session = leader.sessions.open("n1", "agent-1")
    await leader.reconciler.on_jobs(session, [apb.LocalJob(job_id=job.id, attempt=1, state=2)], full=True)
    assert leader.view.job(job.id).state == lc.RUNNING
    await leader.reconciler.on_register(leader.sessions.open("n1", "agent-2"), [])
    after = leader.view.job(job.id)
    assert after.state == lc.PENDING and not after.assignments
    assert [lc.state_name(t.to_state) for t in after.history][-2:] == ["LOST", "PENDING"]


async def test_stale_attempt_is_not_wanted_and_exit_is_not_acked_while_new_attempt_runs(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    job = await _placed_on(leader, "n1")
    j = copy_job(job)
    job_rules.requeue_or_fail(j, lc.LOST, now_ms=1, reason="NODE_LOST", message="", failed=False)
    job_rules.place(j, [pb.TaskAssignment(node="n1")], now_ms=2)
    assert await leader.view.commit(jobs=[j])
    session = leader.sessions.open("n1", "agent-1")
    old_exit = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_EXITED, reason="STOPPED")
    await leader.reconciler.on_jobs(session, [old_exit], full=False)
    assert leader.view.job(job.id).state == lc.SCHEDULED  # attempt 2 is untouched
    desired = leader.sessions.desired_state("n1", session.acked_exits)
    assert [(d.job_id, d.attempt) for d in desired.jobs] == [(job.id, 2)]
    assert job.id not in desired.acknowledged_exits


async def test_after_failover_nodes_get_the_grace_to_reconnect(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    leader.sessions.last_seen_ms.clear()  # as on a new leader: nobody has reconnected yet
    leader.clock.advance(10)  # past the node timeout, inside the failover grace
    await leader.liveness.check()
    assert leader.view.node("n1").state == pb.NODE_STATE_READY
    leader.clock.advance(11)
    await leader.liveness.check()
    assert leader.view.node("n1").state == pb.NODE_STATE_NOT_READY


async def test_silent_node_becomes_not_ready_and_its_jobs_requeue(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    job = await _placed_on(leader, "n1")
    leader.sessions.open("n1", "agent-1")
    leader.clock.advance(3)
    await leader.liveness.check()
    assert leader.view.node("n1").state == pb.NODE_STATE_READY
    leader.clock.advance(3)  # 6 s without a message, timeout 5 s: connected but silent counts as gone
    await leader.liveness.check()
    assert leader.view.node("n1").state == pb.NODE_STATE_NOT_READY
    assert not leader.sessions.connected("n1")
    assert leader.view.job(job.id).state == lc.PENDING
    node = await leader.nodes.register(_inventory())
    assert node.state == pb.NODE_STATE_READY


async def test_drain_requeues_preemptible_now_and_the_rest_at_the_deadline(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    leader.sessions.open("n1", "agent-1")
    pre = await _placed_on(leader, "n1", preemptible=True)
    keep = await _placed_on(leader, "n1")
    node = await leader.nodes.drain("n1", 10, "maintenance")
    assert node.state == pb.NODE_STATE_DRAINING and node.cordoned
    assert leader.view.job(pre.id).state == lc.PENDING
    assert leader.view.job(keep.id).state == lc.SCHEDULED
    leader.clock.advance(11)
    leader.sessions.seen("n1")
    await leader.liveness.check()
    assert leader.view.job(keep.id).state == lc.PENDING
    await leader.liveness.check()
    assert leader.view.node("n1").state == pb.NODE_STATE_DRAINED
    back = await leader.nodes.uncordon("n1")
    assert back.state == pb.NODE_STATE_READY and not back.cordoned


async def test_cost_report_uses_run_time_share_and_node_price(leader: Leader) -> None:
    inv = _inventory()
    inv.labels[PRICE_LABEL] = "4000000"  # $4 per GPU-hour
    await leader.nodes.register(inv)
    job = await _placed_on(leader, "n1")
    j = copy_job(leader.view.job(job.id))
    del j.assignments[0].devices[:]
    j.assignments[0].devices.append(pb.DeviceAssignment(gpu_index=0, gpu_milli=500))
    t0 = leader.clock.now_ms()
    job_rules.mark_running(j, node="n1", now_ms=t0)
    job_rules.record_exit(j, apb.LocalJob(state=apb.LOCAL_JOB_STATE_EXITED), node="n1", now_ms=t0 + 1_800_000)
    assert await leader.view.commit(jobs=[j])
    costs = CostAccountant(leader.store, CostConfig(), leader.clock)
    report = await costs.report(t0 - 1000, t0 + 3_600_000, 0, "")
    assert [(r.key, r.cost_micros, r.jobs) for r in report.rows] == [("ml", 1_000_000, 1)]  # 0.5 GPU x 0.5 h x $4


async def test_finished_jobs_past_retention_are_removed_and_their_cost_kept_per_day(leader: Leader) -> None:
    from gpufleet.coordinator.config import JobsConfig
    from gpufleet.coordinator.state.retention import JobRetention
    from gpufleet.proto.v1 import cluster_pb2 as cpb

    day = 86_400_000
    leader.clock.advance((day - leader.clock.now_ms() % day - 1_800_000) / 1000)  # 23:30 UTC
    inv = _inventory()
    inv.labels[PRICE_LABEL] = "4000000"  # $4 per GPU-hour
    await leader.nodes.register(inv)
    old_job, _ = await leader.jobs.submit(_spec(), "req-old")
    j = copy_job(leader.view.job(old_job.id))
    job_rules.place(j, [pb.TaskAssignment(node="n1")], now_ms=leader.clock.now_ms())
    t0 = leader.clock.now_ms()
    job_rules.mark_running(j, node="n1", now_ms=t0)
    job_rules.record_exit(j, apb.LocalJob(state=apb.LOCAL_JOB_STATE_EXITED), node="n1", now_ms=t0 + 3_600_000)
    assert await leader.view.commit(jobs=[j])  # 1 GPU for 1 h across midnight: $4, half on each day
    leader.clock.advance(3_600)  # now: when it ended
    running = await _placed_on(leader, "n1")  # active jobs are never removed
    costs = CostAccountant(leader.store, CostConfig(), leader.clock)
    window = (t0 - day, t0 + 3 * day)
    before = await costs.report(*window, cpb.COST_GROUP_BY_PROJECT, "")
    assert [(r.key, r.cost_micros) for r in before.rows] == [("ml/p", 4_000_000)]
    gc = JobRetention(leader.view, costs, JobsConfig(retention_s=7200), leader.clock, chunk=48)
    leader.clock.advance(3_600 + 1_800)  # ended 1.5 h ago: kept
    assert await gc.collect_once() == 0 and old_job.id in leader.view.jobs
    leader.clock.advance(3_600)  # 2.5 h: past the 2 h retention
    assert await gc.collect_once() == 1
    assert old_job.id not in leader.view.jobs and running.id in leader.view.jobs
    assert await leader.store.get(keys.job_key(old_job.id)) is None
    assert await leader.store.get(keys.request_key("req-old")) is None
    days, _ = await leader.store.range(keys.COSTS)
    assert [cpb.CostDay.FromString(kv.value).rows[0].cost_micros for kv in days] == [2_000_000, 2_000_000]
    after = await costs.report(*window, cpb.COST_GROUP_BY_PROJECT, "")
    assert [(r.key, r.cost_micros) for r in after.rows] == [("ml/p", 4_000_000)]  # nothing lost
    by_job = await costs.report(*window, cpb.COST_GROUP_BY_JOB, "")
    assert "ml/p (removed jobs)" in [r.key for r in by_job.rows]
    again, created = await leader.jobs.submit(_spec(), "req-old")  # its request id is free again
    assert created and again.id != old_job.id


async def test_drained_job_is_held_until_its_agent_confirms_the_stop(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    session = leader.sessions.open("n1", "agent-1")
    job = await _placed_on(leader, "n1", preemptible=True)
    await leader.nodes.drain("n1", 60, "maintenance")
    assert leader.view.job(job.id).state == lc.PENDING
    assert leader.stops.held(job.id)  # the old attempt may still be in its SIGTERM grace
    stopping = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_STOPPING)
    await leader.reconciler.on_jobs(session, [stopping], full=True)
    assert leader.stops.held(job.id)
    stopped = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_EXITED, reason="STOPPED")
    await leader.reconciler.on_jobs(session, [stopped], full=False)
    assert not leader.stops.held(job.id)
    assert leader.view.job(job.id).state == lc.PENDING  # a stale attempt's exit changes nothing


async def test_hold_ends_when_the_node_is_gone_or_after_the_safety_timeout(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    leader.sessions.open("n1", "agent-1")
    a = await _placed_on(leader, "n1", preemptible=True)
    await leader.nodes.drain("n1", 60, "maintenance")
    assert leader.stops.held(a.id)
    leader.stops.node_gone("n1")
    assert not leader.stops.held(a.id)
    leader.stops.hold("j-x", 1, {"n1"})
    leader.clock.advance(31)
    assert not leader.stops.held("j-x")


async def test_new_leader_holds_jobs_preempted_moments_ago(leader: Leader) -> None:
    from gpufleet.coordinator.config import SchedulingConfig
    from gpufleet.coordinator.scheduler import Scheduler
    from gpufleet.coordinator.state.leader import LeaderRuntime
    from gpufleet.coordinator.state.scheduling import SchedulingLoop

    await leader.nodes.register(_inventory())
    job = copy_job(await _placed_on(leader, "n1", preemptible=True))
    job_rules.requeue_or_fail(
        job, lc.PREEMPTED, now_ms=leader.clock.now_ms(), reason="PREEMPTED", message="x", failed=False
    )
    assert await leader.view.commit(jobs=[job])
    scheduling = SchedulingLoop(
        leader.view, Scheduler(), leader.sessions, SchedulingConfig(), leader.clock, leader.stops
    )
    costs = CostAccountant(leader.store, CostConfig(), leader.clock)
    runtime = LeaderRuntime(leader.view, leader.sessions, scheduling, leader.liveness, costs, 30)
    await runtime.set_enabled(True)  # as a newly elected leader: loads the view from the store
    try:
        await runtime.wait_ready()
        assert leader.stops.held(job.id)
        await leader.reconciler.on_register(leader.sessions.open("n1", "agent-1"), [])
        assert not leader.stops.held(job.id)
    finally:
        await runtime.close()  # returns: every leader-only loop honours cancellation


async def test_acknowledged_exits_are_dropped_once_the_agent_forgot_them(leader: Leader) -> None:
    await leader.nodes.register(_inventory())
    job = await _placed_on(leader, "n1")
    session = leader.sessions.open("n1", "agent-1")
    exited = apb.LocalJob(job_id=job.id, attempt=1, state=apb.LOCAL_JOB_STATE_EXITED, reason="SUCCEEDED")
    await leader.reconciler.on_jobs(session, [exited], full=False)
    await leader.reconciler.on_jobs(session, [exited], full=True)  # not applied by the agent yet
    assert list(leader.sessions.desired_state("n1", session.acked_exits).acknowledged_exits) == [job.id]
    await leader.reconciler.on_jobs(session, [], full=True)
    assert not leader.sessions.desired_state("n1", session.acked_exits).acknowledged_exits
