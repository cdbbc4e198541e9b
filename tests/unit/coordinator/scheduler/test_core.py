"""Core placement: fractions, whole GPUs, multi-GPU locality, gangs, purity of schedule, bind/unbind."""

from __future__ import annotations

import numpy as np

from gpufleet.coordinator.scheduler import ClusterState, Scheduler
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node, placed
from gpufleet.proto.v1 import types_pb2 as pb


def cluster(*nodes: pb.Node) -> ClusterState:
    st = ClusterState()
    for n in nodes:
        st.upsert_node(n)
    return st


def commit(st: ClusterState, jobs: list[pb.Job], plan_placements: list) -> None:  # type: ignore[type-arg]
    by_id = {j.id: j for j in jobs}
    for p in plan_placements:
        st.bind(placed(by_id[p.job_id], p.assignments))


def snapshot(st: ClusterState) -> tuple[bytes, ...]:
    n = st.n
    return (
        st.g_free_milli[:n].tobytes(),
        st.g_free_mib[:n].tobytes(),
        st.n_free_cpu[:n].tobytes(),
        st.n_free_mem[:n].tobytes(),
        st.g_blocked[:n].tobytes(),
        repr(sorted(st.team_milli.items())).encode(),
    )


def test_fraction_lands_on_one_gpu_with_its_share_and_memory() -> None:
    st = cluster(make_node("n0", "H100-80GB", 2))
    job = make_job("j", 0.5, team="a")
    plan = Scheduler().schedule(st, [job], now_ms=0)
    (p,) = plan.placements
    (ta,) = p.assignments
    (dev,) = ta.devices
    assert ta.node == "n0"
    assert dev.mode == pb.SHARING_MODE_SHARED
    assert dev.gpu_milli == 500
    assert dev.gpu_memory_mib == 81559 // 2
    assert dev.gpu_uuid == f"GPU-n0-{dev.gpu_index}"


def test_two_fractions_pack_onto_the_same_gpu() -> None:
    st = cluster(make_node("n0", "H100-80GB", 4))
    jobs = [make_job("a", 0.5), make_job("b", 0.5)]
    plan = Scheduler().schedule(st, jobs, now_ms=0)
    gpus = {p.assignments[0].devices[0].gpu_index for p in plan.placements}
    assert len(plan.placements) == 2 and len(gpus) == 1


def test_schedule_is_pure_and_bind_unbind_round_trips() -> None:
    st = cluster(make_node("n0", gpus=8), make_node("n1", gpus=8))
    before = snapshot(st)
    jobs = [make_job(f"j{i}", g) for i, g in enumerate([0.3, 2, 4, 1, 0.7])]
    plan = Scheduler().schedule(st, jobs, now_ms=0)
    assert snapshot(st) == before
    assert len(plan.placements) == 5
    commit(st, jobs, plan.placements)
    assert st.allocated_milli() == 300 + 2000 + 4000 + 1000 + 700
    for j in jobs:
        st.unbind(j.id)
    assert snapshot(st) == before


def test_multi_gpu_job_gets_distinct_whole_gpus_on_one_numa_node() -> None:
    st = cluster(make_node("n0", gpus=8, numa_per=4))
    plan = Scheduler().schedule(st, [make_job("j", 4)], now_ms=0)
    (ta,) = plan.placements[0].assignments
    idx = sorted(d.gpu_index for d in ta.devices)
    assert len(set(idx)) == 4
    assert {i // 4 for i in idx} in ({0}, {1})
    assert all(d.mode == pb.SHARING_MODE_EXCLUSIVE and d.gpu_milli == 1000 for d in ta.devices)


def test_no_fit_gives_an_actionable_reason() -> None:
    st = cluster(make_node("n0", "H100-80GB", 2), make_node("n1", "L4", 8))
    running = make_job("r", 1, gpu_model="H100-80GB", team="ml-infra")
    plan = Scheduler().schedule(st, [running], now_ms=0)
    commit(st, [running], plan.placements)
    jobs = [
        make_job("q1", 1, gpu_model="L4", team="ml-infra"),
        make_job("big", 2, gpu_model="H100-80GB", team="ml-infra", created_ms=5),
    ]
    plan = Scheduler().schedule(st, jobs, now_ms=10)
    reason = plan.unplaced["big"]
    assert "needs 2x H100-80GB on one node" in reason
    assert "the best node has 1 free" in reason
    assert "1 jobs ahead in the queue (1 of team ml-infra)" in reason
    assert plan.codes["big"] == "UNSCHEDULABLE"


def test_request_bigger_than_any_node_is_unresolvable() -> None:
    st = cluster(make_node("n0", gpus=4))
    plan = Scheduler().schedule(st, [make_job("j", 8)], now_ms=0)
    assert plan.codes["j"] == "UNRESOLVABLE"
    assert "could ever hold it" in plan.unplaced["j"]


def test_cordoned_unhealthy_and_mig_gpus_are_not_used() -> None:
    bad = make_node("sick", gpus=8)
    for g in bad.inventory.gpus:
        g.healthy = False
    st = cluster(
        make_node("cordoned", gpus=8, cordoned=True),
        bad,
        make_node("mig", gpus=2, mig_layouts=[[], []]),
        make_node("ok", gpus=1),
    )
    plan = Scheduler().schedule(st, [make_job("a", 1), make_job("b", 1)], now_ms=0)
    assert [p.assignments[0].node for p in plan.placements] == ["ok"]
    assert "b" in plan.unplaced


def test_gang_is_placed_all_at_once_in_one_region_with_rendezvous() -> None:
    st = cluster(
        make_node("e1", gpus=8, region="east", zone="east-a"),
        make_node("w1", gpus=8, region="west", zone="west-a"),
        make_node("w2", gpus=8, region="west", zone="west-b"),
        make_node("w3", gpus=8, region="west", zone="west-b"),
    )
    plan = Scheduler().schedule(st, [make_job("g", 8, nodes=3)], now_ms=0)
    tas = plan.placements[0].assignments
    assert {t.node for t in tas} == {"w1", "w2", "w3"}
    assert [t.node_rank for t in tas] == [0, 1, 2]
    assert {(t.master_addr, t.master_port, t.nnodes, t.world_size) for t in tas} == {
        (f"{tas[0].node}.sim", tas[0].master_port, 3, 24)
    }
    assert 29500 <= tas[0].master_port < 30500
    # two members fit in zone west-b: prefer it
    plan = Scheduler().schedule(st, [make_job("g2", 8, nodes=2)], now_ms=0)
    assert {t.node for t in plan.placements[0].assignments} == {"w2", "w3"}


def test_gang_that_cannot_fit_in_one_region_places_nothing() -> None:
    st = cluster(make_node("e1", gpus=8, region="east"), make_node("w1", gpus=8, region="west"))
    plan = Scheduler().schedule(st, [make_job("g", 8, nodes=2)], now_ms=0)
    assert not plan.placements
    assert "g" in plan.unplaced and "one region" in plan.unplaced["g"]


def test_upsert_keeps_bound_jobs_accounted() -> None:
    node = make_node("n0", gpus=2)
    st = cluster(node)
    job = make_job("j", 1)
    plan = Scheduler().schedule(st, [job], now_ms=0)
    commit(st, [job], plan.placements)
    st.upsert_node(node)  # a heartbeat with the same inventory
    assert st.allocated_milli() == 1000
    st.remove_node("n0")
    assert st.capacity_milli() == 0
    st.upsert_node(node)
    assert st.allocated_milli() == 1000
    assert int(np.sum(st.n_free_whole[: st.n])) == 1


def test_spread_only_for_jobs_that_ask() -> None:
    st = cluster(make_node("n0", gpus=4), make_node("n1", gpus=4))
    first = make_job("first", 1)
    plan = Scheduler().schedule(st, [first], now_ms=0)
    commit(st, [first], plan.placements)
    used = plan.placements[0].assignments[0].node
    packed = Scheduler().schedule(st, [make_job("pack", 1)], now_ms=0).placements[0].assignments[0].node
    spread = Scheduler().schedule(st, [make_job("spr", 1, spread=True)], now_ms=0).placements[0].assignments[0].node
    assert packed == used
    assert spread != used


def test_fraction_memory_request_is_honoured_per_gpu() -> None:
    st = cluster(make_node("n0", "H100-80GB", 2))
    jobs = [
        make_job("a", 0.3, gpu_memory_mib=50_000, created_ms=1),
        make_job("b", 0.3, gpu_memory_mib=50_000, created_ms=2),
    ]
    plan = Scheduler().schedule(st, jobs, now_ms=0)
    devs = [p.assignments[0].devices[0] for p in plan.placements]
    assert len(devs) == 2
    assert devs[0].gpu_index != devs[1].gpu_index  # 2 x 50,000 MiB do not fit one 81,559 MiB GPU
    assert all(d.gpu_memory_mib == 50_000 for d in devs)
    plan = Scheduler().schedule(st, [make_job("big", 0.1, gpu_memory_mib=90_000)], now_ms=0)
    assert plan.codes["big"] == "UNRESOLVABLE"  # no GPU in the cluster has 90,000 MiB


def test_bind_tolerates_stale_assignments_and_nodes_joining_later() -> None:
    st = cluster(make_node("n0", gpus=2))
    ghost = placed(
        make_job("ghost", 1),
        [pb.TaskAssignment(node="n0", devices=[pb.DeviceAssignment(gpu_index=7, mode=pb.SHARING_MODE_EXCLUSIVE)])],
    )
    later = placed(
        make_job("later", 2),
        [pb.TaskAssignment(node="n9", devices=[pb.DeviceAssignment(gpu_index=i, gpu_milli=1000) for i in (0, 1)])],
    )
    neg = placed(make_job("neg", 1), [pb.TaskAssignment(node="n0", devices=[pb.DeviceAssignment(gpu_index=-1)])])
    for j in (ghost, later, neg):
        st.bind(j)
    assert st.allocated_milli() == 0  # nothing real was taken on n0
    st.upsert_node(make_node("n9", gpus=2))  # the node of a running job registers after the job was bound
    assert st.allocated_milli() == 2000
    plan = Scheduler().schedule(st, [make_job("new", 2)], now_ms=0)
    assert plan.placements[0].assignments[0].node == "n0"
    for j in (ghost, later, neg):
        st.unbind(j.id)
    assert st.allocated_milli() == 0


def test_an_empty_fleet_leaves_every_kind_of_job_pending_with_a_reason() -> None:
    st = ClusterState()
    jobs = [make_job("frac", 0.5, team="a"), make_job("whole", 2, team="a"), make_job("mig", 0, mig_profile="3g.40gb")]
    gang = make_job("gang", 8, team="b")
    gang.spec.nodes = 2
    plan = Scheduler().schedule(st, [*jobs, gang], now_ms=0)
    assert not plan.placements
    assert set(plan.unplaced) == {"frac", "whole", "mig", "gang"}
    assert all(plan.unplaced.values())


def test_the_plan_does_not_depend_on_the_order_pending_jobs_are_given_in() -> None:
    import random

    st = cluster(*(make_node(f"n{i}", "H100-80GB", 4, 32_000) for i in range(4)))
    rng = random.Random(5)
    jobs = [
        make_job(
            f"j{k}", rng.choice((0.25, 0.5, 1, 2)), 2000, team=rng.choice(("a", "b")), priority=rng.choice((0, 100))
        )
        for k in range(40)
    ]
    first = Scheduler().schedule(st, jobs, now_ms=0)
    rng.shuffle(jobs)
    again = Scheduler().schedule(st, jobs, now_ms=0)
    assert [(p.job_id, list(p.assignments)) for p in first.placements] == [
        (p.job_id, list(p.assignments)) for p in again.placements
    ]
    assert first.unplaced == again.unplaced
    assert first.placements and first.unplaced
