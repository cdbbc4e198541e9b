"""Scenario tests with a fake clock: quotas, borrowing and reclaim, preemption, deadlines, budgets, queue
order, placement constraints and MIG (free slices and re-layout)."""

from __future__ import annotations

from gpufleet.common.clock import FakeClock
from gpufleet.coordinator.scheduler import ClusterState, Plan, Scheduler, SchedulerConfig, TeamQuota
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node, placed
from gpufleet.proto.v1 import types_pb2 as pb


def cluster(*nodes: pb.Node) -> ClusterState:
    st = ClusterState()
    for n in nodes:
        st.upsert_node(n)
    return st


def run_and_bind(st: ClusterState, sched: Scheduler, jobs: list[pb.Job], clock: FakeClock) -> Plan:
    plan = sched.schedule(st, jobs, clock.now_ms())
    by_id = {j.id: j for j in jobs}
    for p in plan.placements:
        st.bind(placed(by_id[p.job_id], p.assignments, started_ms=clock.now_ms()))
    return plan


# ---------------------------------------------------------------- quotas and borrowing


def test_team_limit_holds_work_with_a_quota_reason() -> None:
    st = cluster(make_node("n0", gpus=8))
    cfg = SchedulerConfig(quotas={"a": TeamQuota(guaranteed_milli=1000, limit_milli=2000)})
    plan = Scheduler(config=cfg).schedule(st, [make_job(f"j{i}", 1, team="a", created_ms=i) for i in range(3)], 0)
    assert [p.job_id for p in plan.placements] == ["j0", "j1"]
    assert plan.codes["j2"] == "QUOTA"
    assert "team a would exceed its GPU limit" in plan.unplaced["j2"]


def test_per_model_limit_steers_to_other_models() -> None:
    st = cluster(make_node("h", "H100-80GB", 2), make_node("l", "L4", 2))
    cfg = SchedulerConfig(quotas={"a": TeamQuota(per_model={"H100-80GB": (0, 1000)})})
    plan = Scheduler(config=cfg).schedule(st, [make_job(f"j{i}", 1, team="a", created_ms=i) for i in range(4)], 0)
    nodes = [p.assignments[0].node for p in plan.placements]
    assert nodes.count("h") == 1 and nodes.count("l") == 2
    assert "at its H100-80GB limit" in plan.unplaced["j3"] or "(team a at its limit)" in plan.unplaced["j3"]


def test_borrowed_work_is_reclaimed_when_the_owner_needs_its_guarantee() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", gpus=4))
    cfg = SchedulerConfig(quotas={"owner": TeamQuota(guaranteed_milli=2000), "borrower": TeamQuota(guaranteed_milli=0)})
    sched = Scheduler(config=cfg)
    borrowed = [make_job(f"b{i}", 1, team="borrower", preemptible=True, created_ms=i) for i in range(4)]
    plan = run_and_bind(st, sched, borrowed, clock)
    assert len(plan.placements) == 4  # idle capacity lent out
    clock.advance(60)
    plan = run_and_bind(st, sched, [make_job("own", 2, team="owner", created_ms=clock.now_ms())], clock)
    assert plan.placement("own") is not None
    assert len(plan.preemptions) == 2
    assert all("reclaimed for team owner" in p.reason and p.for_job_id == "own" for p in plan.preemptions)


def test_owner_above_its_guarantee_cannot_reclaim() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", gpus=2))
    cfg = SchedulerConfig(quotas={"owner": TeamQuota(guaranteed_milli=1000), "borrower": TeamQuota()})
    sched = Scheduler(config=cfg)
    run_and_bind(st, sched, [make_job("b", 2, team="borrower", preemptible=True)], clock)
    plan = sched.schedule(st, [make_job("own", 2, team="owner")], clock.now_ms())
    assert not plan.preemptions and "own" in plan.unplaced


# ---------------------------------------------------------------- preemption


def test_preemption_takes_the_victims_that_lose_least_work() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", gpus=2), make_node("n1", gpus=2))
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("old", 2, priority="low", preemptible=True)], clock)
    clock.advance(3600)
    run_and_bind(st, sched, [make_job("young", 2, priority="low", preemptible=True)], clock)
    clock.advance(60)
    plan = sched.schedule(st, [make_job("urgent", 2, priority="high")], clock.now_ms())
    assert [p.job_id for p in plan.preemptions] == ["young"]
    assert "higher-priority job urgent" in plan.preemptions[0].reason
    assert plan.placement("urgent") is not None


def test_preemption_respects_min_runtime_preemptible_and_priority() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", gpus=3))
    sched = Scheduler()
    jobs = [
        make_job("fresh", 1, priority="low", preemptible=True, min_runtime_s=600),
        make_job("pinned", 1, priority="low", preemptible=False),
        make_job("peer", 1, priority="high", preemptible=True),
    ]
    run_and_bind(st, sched, jobs, clock)
    clock.advance(60)
    plan = sched.schedule(st, [make_job("hi", 1, priority="high")], clock.now_ms())
    assert not plan.preemptions
    assert "hi" in plan.unplaced
    clock.advance(600)  # past fresh's min runtime
    plan = sched.schedule(st, [make_job("hi", 1, priority="high")], clock.now_ms())
    assert [p.job_id for p in plan.preemptions] == ["fresh"]


# ---------------------------------------------------------------- deadlines, budgets, order


def test_deadlines_are_reported_not_waited_on() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", gpus=1))
    now = clock.now_ms()
    jobs = [
        make_job("late", 1, deadline_ms=now - 5000),
        make_job("tight", 1, deadline_ms=now + 60_000, max_runtime_s=3600),
        make_job("ok", 1, deadline_ms=now + 7_200_000, max_runtime_s=3600, created_ms=5),
        make_job("plain", 1, created_ms=1),
    ]
    plan = Scheduler().schedule(st, jobs, now)
    assert "deadline passed 5s ago" in plan.unplaced["late"]
    assert "cannot meet its deadline" in plan.unplaced["tight"]
    assert plan.codes["late"] == plan.codes["tight"] == "DEADLINE"
    # the deadline job goes first within its priority even though it arrived later
    assert [p.job_id for p in plan.placements] == ["ok"]
    assert "deadline" not in plan.unplaced["plain"]


def test_exhausted_budget_holds_new_work() -> None:
    st = cluster(make_node("n0", gpus=2))
    cfg = SchedulerConfig(budget_exhausted=lambda team: team == "broke")
    plan = Scheduler(config=cfg).schedule(st, [make_job("a", 1, team="broke"), make_job("b", 1, team="rich")], 0)
    assert [p.job_id for p in plan.placements] == ["b"]
    assert plan.codes["a"] == "BUDGET" and "exhausted its budget" in plan.unplaced["a"]


def test_queue_order_priority_then_fair_share_then_arrival() -> None:
    st = cluster(make_node("n0", gpus=3))
    jobs = [
        make_job("a1", 1, team="a", created_ms=1),
        make_job("a2", 1, team="a", created_ms=2),
        make_job("a3", 1, team="a", created_ms=3),
        make_job("b1", 1, team="b", created_ms=4),
        make_job("crit", 1, team="a", priority="critical", created_ms=9),
    ]
    plan = Scheduler().schedule(st, jobs, 0)
    assert [p.job_id for p in plan.placements] == ["crit", "a1", "b1"]
    assert "3 jobs ahead in the queue (2 of team a)" in plan.unplaced["a2"]


# ---------------------------------------------------------------- constraints


def test_region_spot_price_and_model_constraints() -> None:
    st = cluster(
        make_node("cheap-spot", "L4", 4, region="eu", spot=True, price_micros=500_000),
        make_node("dear", "H100-80GB", 4, region="us", price_micros=4_000_000),
        make_node("mid", "A100-80GB", 4, region="us", price_micros=2_000_000),
    )
    s = Scheduler()
    pick = lambda job: s.schedule(st, [job], 0).placements[0].assignments[0].node  # noqa: E731
    assert pick(make_job("r", 1, regions=["eu"])) == "cheap-spot"
    assert pick(make_job("s", 1, spot=pb.SPOT_POLICY_REQUIRED)) == "cheap-spot"
    assert pick(make_job("p", 1, regions=["us"], max_price_micros=3_000_000)) == "mid"
    assert pick(make_job("m", 1, gpu_model="H100-80GB|L4", spot=pb.SPOT_POLICY_NEVER)) == "dear"
    plan = s.schedule(st, [make_job("x", 1, regions=["eu"], spot=pb.SPOT_POLICY_NEVER)], 0)
    assert "spot (job says spot: never)" in plan.unplaced["x"]


def test_price_ceilings_read_the_documented_node_label() -> None:
    from gpufleet.common import node_labels

    st = cluster(
        make_node("labelled-dear", gpus=4, labels={node_labels.PRICE: "4000000"}),
        make_node("garbled", gpus=4, labels={node_labels.PRICE: "four dollars"}),
        make_node("owned", gpus=1),  # no price label: owned hardware, price 0
    )
    s = Scheduler()
    plan = s.schedule(st, [make_job(f"c{i}", 1, max_price_micros=3_000_000, created_ms=i) for i in range(2)], 0)
    assert [p.assignments[0].node for p in plan.placements] == ["owned"]
    assert "2 nodes above the price ceiling $3.00/GPU-hour" in plan.unplaced["c1"], plan.unplaced
    assert s.schedule(st, [make_job("any", 1)], 0).placements  # without a ceiling every node is fine


def test_owned_and_cheaper_nodes_fill_first() -> None:
    from gpufleet.common import node_labels

    st = cluster(
        make_node("cloud-dear", gpus=4, labels={node_labels.PRICE: "4000000"}),
        make_node("cloud-cheap", gpus=4, labels={node_labels.PRICE: "1500000"}),
        make_node("owned", gpus=4),  # no price label: owned hardware
    )
    jobs = [make_job(f"j{i}", 1, created_ms=i) for i in range(12)]
    plan = Scheduler().schedule(st, jobs, 0)
    nodes = [p.assignments[0].node for p in plan.placements]
    assert nodes == ["owned"] * 4 + ["cloud-cheap"] * 4 + ["cloud-dear"] * 4


# ---------------------------------------------------------------- MIG


def test_mig_job_gets_a_free_slice_of_its_profile() -> None:
    st = cluster(make_node("n0", "H100-80GB", 2, mig_layouts=[["3g.40gb", "3g.40gb"]]))
    plan = Scheduler().schedule(st, [make_job("m1", mig_profile="3g.40gb"), make_job("m2", mig_profile="3g.40gb")], 0)
    devs = [p.assignments[0].devices[0] for p in plan.placements]
    assert len(devs) == 2
    assert {d.mig_device_uuid for d in devs} == {"MIG-n0-0-3g.40gb-0", "MIG-n0-0-3g.40gb-4"}
    assert all(d.mode == pb.SHARING_MODE_MIG and d.mig_profile == "3g.40gb" for d in devs)
    assert not plan.mig_relayouts


def test_mig_relayout_is_planned_and_never_touches_slices_in_use() -> None:
    clock = FakeClock()
    node = make_node("n0", "H100-80GB", 1, mig_layouts=[["3g.40gb", "3g.40gb"]])
    st = cluster(node)
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("user", mig_profile="3g.40gb")], clock)
    used = next(s for s in st.mig_slots[0][0] if s.used)
    plan = sched.schedule(st, [make_job("small", mig_profile="1g.10gb")], clock.now_ms())
    assert plan.codes["small"] == "WAIT" and "re-laid-out" in plan.unplaced["small"]
    (r,) = plan.mig_relayouts
    assert (r.node, r.gpu_index, r.for_job_id) == ("n0", 0, "small")
    assert "1g.10gb" in r.profiles
    assert (used.profile, used.start) in set(zip(r.profiles, r.starts, strict=True))
    assert r.cost == 2  # the operation + one free 3g slice destroyed
    # a second MIG job in the same cycle does not plan on the same GPU again
    plan = sched.schedule(st, [make_job("s1", mig_profile="1g.10gb"), make_job("s2", mig_profile="1g.10gb")], 0)
    assert len(plan.mig_relayouts) == 1


def test_mig_gpu_fully_in_use_cannot_be_relaid() -> None:
    clock = FakeClock()
    st = cluster(make_node("n0", "H100-80GB", 1, mig_layouts=[["7g.80gb"]]))
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("big", mig_profile="7g.80gb")], clock)
    plan = sched.schedule(st, [make_job("small", mig_profile="1g.10gb")], clock.now_ms())
    assert not plan.mig_relayouts
    assert plan.codes["small"] == "UNSCHEDULABLE"


def test_no_relayout_on_a_cordoned_node() -> None:
    clock = FakeClock()
    node = make_node("n0", "H100-80GB", 1, mig_layouts=[["3g.40gb", "3g.40gb"]])
    st = cluster(node)
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("user", mig_profile="3g.40gb")], clock)
    cordoned = pb.Node()
    cordoned.CopyFrom(node)
    cordoned.cordoned = True
    st.upsert_node(cordoned)
    plan = sched.schedule(st, [make_job("small", mig_profile="1g.10gb")], clock.now_ms())
    assert not plan.mig_relayouts
    assert "not ready, cordoned or draining" in plan.unplaced["small"]


def test_a_high_priority_gang_preempts_in_one_region_and_starts_on_the_freed_nodes() -> None:
    clock = FakeClock()
    st = cluster(
        make_node("e0", gpus=8, region="east", zone="east-a"),
        make_node("e1", gpus=8, region="east", zone="east-a"),
        make_node("w0", gpus=8, region="west", zone="west-a"),
    )
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("old-e0", 8, priority="low", preemptible=True)], clock)
    run_and_bind(st, sched, [make_job("old-e1", 8, priority="low", preemptible=True)], clock)
    clock.advance(3600)
    run_and_bind(st, sched, [make_job("young-w0", 8, priority="low", preemptible=True)], clock)
    clock.advance(60)
    gang = make_job("train", 8, priority="high", nodes=2)
    plan = sched.schedule(st, [gang], clock.now_ms())
    # west alone has too few nodes, so both east jobs go (even though the west one lost less work)
    assert sorted(p.job_id for p in plan.preemptions) == ["old-e0", "old-e1"]
    assert all(p.for_job_id == "train" and "higher-priority job train" in p.reason for p in plan.preemptions)
    placement = plan.placement("train")
    assert placement is not None
    assert sorted(a.node for a in placement.assignments) == ["e0", "e1"]


def test_a_gang_uses_a_node_that_already_fits_and_preempts_only_the_missing_one() -> None:
    clock = FakeClock()
    st = cluster(make_node("a", gpus=4, region="r"), make_node("b", gpus=4, region="r"))
    sched = Scheduler()
    run_and_bind(st, sched, [make_job("low", 4, priority="low", preemptible=True)], clock)
    clock.advance(60)
    plan = sched.schedule(st, [make_job("g", 4, priority="high", nodes=2)], clock.now_ms())
    assert [p.job_id for p in plan.preemptions] == ["low"]
    assert plan.placement("g") is not None


def test_a_gang_does_not_preempt_when_it_could_not_start_anyway() -> None:
    clock = FakeClock()
    st = cluster(make_node("a", gpus=4, region="r1"), make_node("b", gpus=4, region="r2"))
    sched = Scheduler()
    run_and_bind(st, sched, [make_job(f"low{i}", 4, priority="low", preemptible=True) for i in range(2)], clock)
    clock.advance(60)
    plan = sched.schedule(st, [make_job("g", 4, priority="high", nodes=2)], clock.now_ms())
    assert not plan.preemptions  # one node per region: no region can ever hold both members
    assert "g" in plan.unplaced
    for name in ("low0", "low1"):  # and nothing was released
        assert name in st.jobs
