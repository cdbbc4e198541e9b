"""Properties over random clusters and queues: no over-commit of GPU, node or quota; gangs all-or-nothing in
one region; preemption only takes lower-priority (or borrowed) preemptible work; schedule is pure."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stn

from gpufleet.coordinator.scheduler import ClusterState, Scheduler, SchedulerConfig, TeamQuota
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node, placed
from gpufleet.proto.v1 import types_pb2 as pb

MODELS = ("H100-80GB", "L4")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

node_st = stn.tuples(
    stn.sampled_from(MODELS),
    stn.integers(1, 8),
    stn.sampled_from(["r1", "r2"]),
    stn.integers(4, 64),  # cpu cores
    stn.booleans(),  # one MIG GPU (H100 only)
)
job_st = stn.tuples(
    stn.sampled_from([0, 0.1, 0.25, 0.5, 0.7, 1, 1, 2, 4, 8]),
    stn.integers(1, 16),  # cpu cores
    stn.sampled_from([None, "H100-80GB", "L4", "H100-80GB|L4"]),
    stn.integers(1, 3),  # gang size
    stn.sampled_from(["low", "normal", "high"]),
    stn.sampled_from(["a", "b"]),
    stn.booleans(),  # preemptible
    stn.sampled_from(["", "", "1g.10gb", "3g.40gb"]),
)


def build(nodes: list[tuple[str, int, str, int, bool]]) -> ClusterState:
    st = ClusterState()
    for k, (model, gpus, region, cores, mig) in enumerate(nodes):
        layouts = [["3g.40gb", "1g.10gb", "1g.10gb"]] if mig and model == "H100-80GB" else []
        st.upsert_node(make_node(f"n{k}", model, gpus, cores * 1000, 65536, region=region, mig_layouts=layouts))
    return st


def jobs_from(specs: list[tuple[float, int, str | None, int, str, str, bool, str]], prefix: str) -> list[pb.Job]:
    out = []
    for k, (gpus, cores, model, nodes, prio, team, pre, mig) in enumerate(specs):
        out.append(
            make_job(
                f"{prefix}{k}",
                0 if mig else gpus,
                cores * 1000,
                1024,
                None if mig else model,
                mig_profile=mig,
                nodes=nodes if gpus >= 1 and not mig else 1,
                priority=prio,
                team=team,
                preemptible=pre,
                created_ms=k,
            )
        )
    return out


def check_capacity(st: ClusterState, jobs: list[pb.Job]) -> None:
    gpu_milli: dict[tuple[str, int], int] = defaultdict(int)
    gpu_mib: dict[tuple[str, int], int] = defaultdict(int)
    cpu: dict[str, int] = defaultdict(int)
    slices: set[str] = set()
    for j in jobs:
        for ta in j.assignments:
            cpu[ta.node] += j.spec.resources.cpu_milli
            for d in ta.devices:
                gpu_milli[(ta.node, d.gpu_index)] += d.gpu_milli
                gpu_mib[(ta.node, d.gpu_index)] += d.gpu_memory_mib
                if d.mig_device_uuid:
                    assert d.mig_device_uuid not in slices, "a MIG slice handed out twice"
                    slices.add(d.mig_device_uuid)
    for (node, idx), milli in gpu_milli.items():
        inv = st.node(node)
        assert inv is not None
        gpu = next(g for g in inv.inventory.gpus if g.index == idx)
        assert milli <= 1000, f"GPU {node}/{idx} over-committed: {milli}"
        assert gpu_mib[(node, idx)] <= gpu.memory_mib
    for node, c in cpu.items():
        inv = st.node(node)
        assert inv is not None and c <= inv.inventory.cpu_milli, f"node {node} CPU over-committed"


@SETTINGS
@given(stn.lists(node_st, min_size=1, max_size=6), stn.lists(job_st, min_size=1, max_size=25))
def test_no_overcommit_gangs_all_or_nothing_and_purity(nodes: list, specs: list) -> None:  # type: ignore[type-arg]
    st = build(nodes)
    jobs = jobs_from(specs, "j")
    before = (st.g_free_milli[: st.n].tobytes(), st.n_free_cpu[: st.n].tobytes(), dict(st.team_milli))
    plan = Scheduler().schedule(st, jobs, 0)
    assert (st.g_free_milli[: st.n].tobytes(), st.n_free_cpu[: st.n].tobytes(), dict(st.team_milli)) == before
    by_id = {j.id: j for j in jobs}
    assert set(plan.unplaced) | {p.job_id for p in plan.placements} == set(by_id)
    assert not set(plan.unplaced) & {p.job_id for p in plan.placements}
    bound = []
    for p in plan.placements:
        job = by_id[p.job_id]
        want = max(1, job.spec.nodes)
        assert len(p.assignments) == want, "gang partially placed"
        assert len({a.node for a in p.assignments}) == want
        regions = {st.node(a.node).inventory.region for a in p.assignments}  # type: ignore[union-attr]
        assert len(regions) == 1, "gang spans regions"
        for a in p.assignments:
            n_dev = len(a.devices)
            r = job.spec.resources
            expect = 1 if (r.mig_profile or 0 < r.gpu_milli < 1000) else r.gpu_milli // 1000
            assert n_dev == expect
            assert len({d.gpu_index for d in a.devices}) == n_dev
            models = set(r.gpu_models)
            inv = st.node(a.node)
            assert inv is not None
            for d in a.devices:
                gpu = next(g for g in inv.inventory.gpus if g.index == d.gpu_index)
                assert not models or gpu.model in models
                assert (gpu.mig_mode == pb.MIG_MODE_ENABLED) == bool(r.mig_profile)
        bound.append(placed(job, p.assignments))
    check_capacity(st, bound)
    for j in bound:
        st.bind(j)
    # a second cycle on top of the first must not over-commit either
    more = jobs_from(specs, "k")
    plan2 = Scheduler().schedule(st, more, 1)
    by2 = {j.id: j for j in more}
    gone = {p.job_id for p in plan2.preemptions}
    survivors = [j for j in bound if j.id not in gone]
    check_capacity(st, survivors + [placed(by2[p.job_id], p.assignments) for p in plan2.placements])


@SETTINGS
@given(stn.lists(job_st, min_size=1, max_size=12), stn.lists(job_st, min_size=1, max_size=6))
def test_quota_limits_hold_and_preemption_takes_only_lower_priority_preemptible(
    first: list,  # type: ignore[type-arg]
    second: list,  # type: ignore[type-arg]
) -> None:
    st = build([("H100-80GB", 8, "r1", 64, False), ("L4", 4, "r1", 32, False)])
    cfg = SchedulerConfig(quotas={"a": TeamQuota(limit_milli=5000), "b": TeamQuota(limit_milli=9000)})
    sched = Scheduler(config=cfg)
    running = jobs_from(first, "r")
    plan = sched.schedule(st, running, 0)
    by_id = {j.id: j for j in running}
    for p in plan.placements:
        st.bind(placed(by_id[p.job_id], p.assignments, started_ms=1))
    assert st.team_milli.get("a", 0) <= 5000 and st.team_milli.get("b", 0) <= 9000
    newcomers = jobs_from(second, "n")
    plan2 = sched.schedule(st, newcomers, 10_000)
    prio = {j.id: j.priority_value for j in newcomers}
    for pre in plan2.preemptions:
        victim = st.jobs[pre.job_id].job
        assert victim.spec.preemptible
        assert victim.priority_value < prio[pre.for_job_id]
    for p in plan2.placements:
        assert p.job_id in prio
    usage = dict(st.team_milli)
    for pre in plan2.preemptions:
        b = st.jobs[pre.job_id]
        usage[b.team] = usage.get(b.team, 0) - b.milli  # a CPU-only victim's team may hold no GPU
    for p in plan2.placements:
        j = next(x for x in newcomers if x.id == p.job_id)
        usage[j.spec.team] = usage.get(j.spec.team, 0) + sum(d.gpu_milli for a in p.assignments for d in a.devices)
    assert usage.get("a", 0) <= 5000 and usage.get("b", 0) <= 9000


@SETTINGS
@given(stn.lists(node_st, min_size=1, max_size=5), stn.lists(stn.lists(job_st, max_size=8), min_size=1, max_size=4))
def test_cached_scores_carried_across_cycles_give_the_same_plan_as_a_fresh_scheduler(
    nodes: list,  # type: ignore[type-arg]
    waves: list,  # type: ignore[type-arg]
) -> None:
    st = build(nodes)
    persistent = Scheduler()
    for w, specs in enumerate(waves):
        jobs = jobs_from(specs, f"w{w}-")
        a = persistent.schedule(st, jobs, w)
        b = Scheduler().schedule(st, jobs, w)
        assert [(p.job_id, list(p.assignments)) for p in a.placements] == [
            (p.job_id, list(p.assignments)) for p in b.placements
        ]
        assert a.unplaced == b.unplaced
        by_id = {j.id: j for j in jobs}
        for p in a.placements:
            st.bind(placed(by_id[p.job_id], p.assignments))
