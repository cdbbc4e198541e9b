"""The scheduler's fast paths give the same answers as the plain computations they replace.

A cycle leaves the state exactly as it found it (rollback recomputes each touched node once), a compact row
view reads the same values as indexing the fleet arrays, a MIG re-layout answered from the memo is the
one computed from scratch, the shape cache's summary pre-check never drops a node the filters accept, and
every plugin's one-node form (``filter_one``/``score_one``) answers exactly as its vector form.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from gpufleet.coordinator.scheduler import ClusterState, Plan, Scheduler, mig_relayout, placement, shape_cache
from gpufleet.coordinator.scheduler import state as state_module
from gpufleet.coordinator.scheduler.config import SchedulerConfig, TeamQuota
from gpufleet.coordinator.scheduler.framework import Candidates, CycleState, Options
from gpufleet.coordinator.scheduler.profiles import DEFAULT_PROFILE
from gpufleet.coordinator.scheduler.request import request_from_job
from gpufleet.coordinator.scheduler.shape_cache import may_fit
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node, placed
from gpufleet.proto.v1 import types_pb2 as pb

ARRAYS = ("g_free_milli", "g_free_mib", "g_blocked", "n_free_cpu", "n_free_mem", "n_free_whole", "n_free_milli")


def _fleet(n: int) -> ClusterState:
    st = ClusterState()
    for i in range(n):
        mig = [["3g.40gb", "2g.20gb", "1g.10gb"], ["1g.10gb"] * 7] if i % 4 == 0 else []
        st.upsert_node(make_node(f"n{i}", "H100-80GB", 8, 64_000, 1_048_576, mig_layouts=mig))
    return st


def _jobs(rng: random.Random, n: int, prefix: str) -> list[pb.Job]:
    out = []
    for k in range(n):
        kind = rng.choice(("frac", "frac", "whole", "mig"))
        jid = f"{prefix}{k}"
        if kind == "frac":
            out.append(make_job(jid, rng.choice((0.25, 0.5, 0.3)), 2000, 4096, created_ms=k))
        elif kind == "whole":
            out.append(make_job(jid, rng.choice((1, 2, 4)), 4000, 16384, created_ms=k))
        else:
            out.append(make_job(jid, 0, 1000, 4096, mig_profile=rng.choice(("1g.10gb", "3g.40gb")), created_ms=k))
    return out


def test_a_cycle_leaves_every_derived_column_as_it_was() -> None:
    rng = random.Random(7)
    st = _fleet(12)
    sched = Scheduler()
    for j in _jobs(rng, 30, "b"):
        p = sched.schedule(st, [j], 0).placement(j.id)
        if p is not None:
            st.bind(placed(j, p.assignments))
    before = {a: getattr(st, a)[: st.n].copy() for a in ARRAYS}
    sigma = st.n_sigma[: st.n].copy()
    mig = {k: v[: st.n].copy() for k, v in st.mig_free.items()}
    plan = sched.schedule(st, _jobs(rng, 200, "p"), 1)
    assert plan.placements  # the cycle did reserve (and roll back) something
    for a in ARRAYS:
        assert np.array_equal(getattr(st, a)[: st.n], before[a]), a
    assert np.array_equal(st.n_sigma[: st.n], sigma)
    for k, v in mig.items():
        assert np.array_equal(st.mig_free[k][: st.n], v), k


def test_a_row_view_reads_the_same_values_as_the_fleet_arrays() -> None:
    st = _fleet(10)
    for idx in (np.array([3]), np.array([2, 3, 4]), np.array([0, 5, 9])):
        view = st.rows(idx)
        assert view.n == len(idx)
        for name in ClusterState._ROW_ARRAYS:
            assert np.array_equal(getattr(view, name), getattr(st, name)[idx]), name


def test_a_memoized_mig_relayout_is_the_one_computed_from_scratch() -> None:
    st = _fleet(8)
    req = request_from_job(make_job("m", 0, 1000, 4096, mig_profile="2g.20gb"))
    mask = np.ones(st.n, dtype=np.bool_)
    mig_relayout._LAYOUTS.clear()
    fresh = mig_relayout.plan(st, req, mask)
    again = mig_relayout.plan(st, req, mask)  # answered from the memo
    assert fresh is not None
    assert again == fresh


def test_the_summary_precheck_keeps_every_node_the_filters_accept() -> None:
    rng = random.Random(11)
    st = _fleet(16)
    sched = Scheduler()
    probes = [*_jobs(rng, 40, "q"), make_job("c", 0, 2000, 4096), make_job("big", 8, 1000, 1024)]
    for round_ in range(6):  # fill the fleet step by step, checking every probe shape at each level
        for j in _jobs(rng, 25, f"f{round_}-"):
            p = sched.schedule(st, [j], 0).placement(j.id)
            if p is not None:
                st.bind(placed(j, p.assignments))
        cycle = CycleState(st, sched.config, 0, st.mix.classes())
        idx = np.arange(st.n)
        for j in probes:
            req = request_from_job(j)
            res, cand = sched.filter(cycle, req)
            accepted = cand.node if res.ok else np.zeros(st.n, dtype=np.bool_)
            kept = may_fit(st, req, idx)
            assert not (accepted & ~kept).any(), (req.describe(), np.flatnonzero(accepted & ~kept))
            # and on the kept nodes NodeHealth and NodeResources (skipped there) would remove nothing
            health_and_room = (
                st.n_ready[: st.n]
                & (st.n_free_cpu[: st.n] >= req.cpu_milli)
                & (st.n_free_mem[: st.n] >= req.memory_mib)
            )
            assert not (kept & ~health_and_room).any(), req.describe()


def _mixed_fleet(rng: random.Random) -> ClusterState:
    """Models, MIG, prices (so Price speaks), spot, two providers and regions, a cordoned node, a bad GPU."""
    st = ClusterState()
    for i in range(24):
        model = ("H100-80GB", "A100-80GB", "L4", "T4")[i % 4]
        mig = (
            [["3g.40gb", "2g.20gb", "1g.10gb"], ["1g.10gb"] * 7]
            if model in ("H100-80GB", "A100-80GB") and i % 3 == 0
            else []
        )
        node = make_node(
            f"n{i}",
            model,
            rng.choice((1, 2, 4, 8)) if not mig else 8,
            rng.choice((16_000, 64_000)),
            rng.choice((65_536, 1_048_576)),
            provider=("aws", "gcp")[i % 2],
            region=("us-east-1", "us-west-2")[(i // 2) % 2],
            spot=i % 5 == 0,
            price_micros=rng.choice((-1, 1_200_000, 3_500_000, 12_000_000)),
            mig_layouts=mig,
            cordoned=i == 7,
        )
        if i == 5:
            node.inventory.gpus[0].healthy = False
        st.upsert_node(node)
    return st


def _probes(rng: random.Random, tag: str = "") -> list[pb.Job]:
    """One job of every kind the plugins treat differently (ids end in ``tag``: a job id names one spec)."""
    out = [
        make_job("f1" + tag, 0.25, 2000, 4096),
        make_job("f2" + tag, 0.5, 8000, 8192, gpu_model=["L4", "T4"]),
        make_job("f3" + tag, 0.3, 1000, 1024, gpu_memory_mib=30_000),
        make_job("f4" + tag, 0.1, 60_000, 1024),
        make_job("w1" + tag, 1, 4000, 16384),
        make_job("w2" + tag, 2, 8000, 16384, gpu_model="H100-80GB", spot=pb.SPOT_POLICY_NEVER),
        make_job("w4" + tag, 4, 8000, 16384, providers=["aws"], max_price_micros=4_000_000),
        make_job("w8" + tag, 8, 1000, 1024, regions=["us-west-2"]),
        make_job("m1" + tag, 0, 1000, 4096, mig_profile="1g.10gb"),
        make_job("m3" + tag, 0, 1000, 4096, mig_profile="3g.40gb", gpu_model="A100-80GB"),
        make_job("c" + tag, 0, 2000, 4096),
        make_job("q" + tag, 1, 1000, 1024, team="capped"),
        make_job("s" + tag, 0.5, 1000, 1024, spot=pb.SPOT_POLICY_REQUIRED),
    ]
    out += [
        make_job("g2" + tag, 2, 4000, 8192, nodes=2),
        make_job("g8" + tag, 8, 1000, 1024, nodes=2, regions=["us-east-1"]),
        make_job("gf" + tag, 1, 1000, 1024, nodes=3, gpu_model="L4"),
    ]
    spread = make_job("sp" + tag, 0.25, 1000, 1024)
    spread.spec.placement.spread = True
    return [*out, spread, *_jobs(rng, 10, "r" + tag)]


def _assert_same_plan(got: Plan, want: Plan) -> None:
    """The same placements (jobs, in order, with their devices) and the same reasons for the rest."""
    assert [(p.job_id, list(p.assignments)) for p in got.placements] == [
        (p.job_id, list(p.assignments)) for p in want.placements
    ]
    assert got.unplaced == want.unplaced


def _config() -> SchedulerConfig:
    return SchedulerConfig(quotas={"capped": TeamQuota(per_model={"H100-80GB": (0, 2000), "L4": (0, 500)})})


def test_the_one_node_forms_of_every_plugin_match_the_vector_forms() -> None:
    rng = random.Random(5)
    st = _mixed_fleet(rng)
    sched = Scheduler(config=_config())
    probes = [request_from_job(j) for j in _probes(rng)]
    fill = [make_job(f"cap{k}", 0.5, 1000, 1024, team="capped") for k in range(3)]
    for round_ in range(5):
        for j in [*fill, *_jobs(rng, 20, f"f{round_}-")] if round_ == 0 else _jobs(rng, 20, f"f{round_}-"):
            p = sched.schedule(st, [j], 0).placement(j.id)
            if p is not None:
                st.bind(placed(j, p.assignments))
        assert st.prices_vary()
        cycle = CycleState(st, sched.config, 0, st.mix.classes())
        for req in probes:
            for f in sched.profile.filter:
                cand = Candidates(st.n_alive[: st.n].copy())
                res = f.filter(cycle, req, cand)
                for i in st.live_nodes():
                    one = f.filter_one(cycle, req, i)
                    vec = bool(cand.node[i]) and (res.ok or res.status.value == "SKIP")
                    assert (one is not False) == vec, (f.name, req.describe(), i)
                    if vec and cand.gpu is not None and isinstance(one, list):
                        assert one == np.flatnonzero(cand.gpu[i]).tolist(), (f.name, req.describe(), i)
            res, cand = sched.filter(cycle, req)
            if not res.ok:
                continue
            opts = placement.options(req, cand)
            for i in np.unique(opts.node).tolist():
                mine = Options(opts.node[opts.node == i], opts.col[opts.node == i])
                cols = mine.col.tolist()
                for plugin, _ in sched.profile.score:
                    vec_s = plugin.score(cycle, req, mine)
                    one_s = plugin.score_one(cycle, req, i, cols)
                    if vec_s is None or one_s is None:
                        assert vec_s is None and one_s is None, (plugin.name, req.describe())
                        continue
                    want = vec_s.tolist()
                    assert (one_s if isinstance(one_s, list) else [one_s] * len(cols)) == want, (
                        plugin.name,
                        req.describe(),
                        i,
                    )


def test_a_cycle_gives_the_same_plan_with_and_without_one_by_one_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(9)
    st = _mixed_fleet(rng)
    for round_ in range(3):
        fill = _jobs(rng, 40, f"f{round_}-")
        plan = Scheduler(config=_config()).schedule(st, fill, 0)
        for p in plan.placements:
            st.bind(placed(next(j for j in fill if j.id == p.job_id), p.assignments))
        queue = [*_probes(rng, f"-{round_}"), *_jobs(rng, 150, f"p{round_}-")]
        one_by_one = Scheduler(config=_config()).schedule(st, queue, 1)
        monkeypatch.setattr(shape_cache, "ONE_BY_ONE", 0)
        vector = Scheduler(config=_config()).schedule(st, queue, 1)
        monkeypatch.undo()
        assert one_by_one.placements, "the cycle placed something"
        _assert_same_plan(one_by_one, vector)


@pytest.mark.parametrize("log_max", [8, 1 << 16])
def test_a_scheduler_carrying_its_cache_across_cycles_plans_like_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch, log_max: int
) -> None:
    monkeypatch.setattr(state_module, "CHANGE_LOG_MAX", log_max)  # 8: caches outlive the change log
    rng = random.Random(13)
    st = _mixed_fleet(rng)
    fill = _jobs(rng, 120, "fill-")
    by_id = {j.id: j for j in fill}
    for p in Scheduler(config=_config()).schedule(st, fill, 0).placements:
        st.bind(placed(by_id[p.job_id], p.assignments))
    carried = Scheduler(config=_config())
    kept = 0
    for round_ in range(8):
        queue = [*_probes(rng, f"-{round_}"), *_jobs(rng, 60, f"p{round_}-")]
        carry = carried._carry
        plan = carried.schedule(st, queue, round_)
        kept += carried._carry is carry
        fresh = Scheduler(config=_config()).schedule(st, queue, round_)
        _assert_same_plan(plan, fresh)
        by_id = {j.id: j for j in queue}
        for p in plan.placements[:3]:  # bind a few (the mix stays put, so the cache is carried), some jobs end
            st.bind(placed(by_id[p.job_id], p.assignments))
        for job_id in list(st.jobs)[:2]:
            st.unbind(job_id)
    assert kept >= 5, "the cache was carried across most cycles"


def test_the_shape_cache_plans_what_evaluating_the_whole_fleet_for_every_job_plans() -> None:
    rng = random.Random(21)
    st = _mixed_fleet(rng)
    uncached = dataclasses.replace(DEFAULT_PROFILE, node_local_scores=False)
    for round_ in range(4):
        queue = [*_probes(rng, f"-{round_}"), *_jobs(rng, 80, f"p{round_}-")]
        cached = Scheduler(config=_config()).schedule(st, queue, round_)
        plain = Scheduler(uncached, config=_config()).schedule(st, queue, round_)
        assert any(len(p.assignments) > 1 for p in cached.placements) or round_, "a gang was placed"
        _assert_same_plan(cached, plain)
        by_id = {j.id: j for j in queue}
        for p in cached.placements:
            st.bind(placed(by_id[p.job_id], p.assignments))


def test_the_one_node_fragmentation_matches_the_vector_one_on_nodes_short_of_cpu() -> None:
    # small, CPU-tight nodes and a mix whose classes differ in CPU need: a placement's own CPU makes classes
    # infeasible (the path the vector form computes with masks and the one-node form with bisects)
    rng = random.Random(3)
    st = ClusterState()
    for i in range(30):
        st.upsert_node(make_node(f"c{i}", "A100-80GB", rng.choice((2, 4, 8)), rng.choice((6_000, 12_000, 24_000))))
    sched = Scheduler()
    for k in range(120):
        j = make_job(f"b{k}", rng.choice((0.1, 0.3, 0.5, 0.7, 1, 2)), rng.choice((500, 1000, 2000, 3000, 5000)), 1024)
        p = sched.schedule(st, [j], 0).placement(j.id)
        if p is not None:
            st.bind(placed(j, p.assignments))
    cycle = CycleState(st, sched.config, 0, st.mix.classes())
    frag = next(p for p, _ in sched.profile.score if p.name == "Fragmentation")
    checked = 0
    for milli in (0.2, 0.5, 1, 2):
        for cpu in (0, 1000, 2500, 4000, 7000):
            req = request_from_job(make_job("p", milli, cpu, 512))
            res, cand = sched.filter(cycle, req)
            if not res.ok:
                continue
            opts = placement.options(req, cand)
            for i in np.unique(opts.node).tolist():
                mine = Options(opts.node[opts.node == i], opts.col[opts.node == i])
                vec = frag.score(cycle, req, mine)
                assert vec is not None
                assert frag.score_one(cycle, req, i, mine.col.tolist()) == vec.tolist(), (req.describe(), i)
                checked += 1
    assert checked > 100


def test_requests_are_parsed_once_per_job_version_not_per_reason_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpufleet.coordinator.scheduler import scheduler as scheduler_module

    parsed: list[str] = []
    parse = scheduler_module.request_from_job

    def counting(job: pb.Job) -> object:
        parsed.append(job.id)
        return parse(job)

    monkeypatch.setattr(scheduler_module, "request_from_job", counting)
    st = _fleet(2)
    sched = Scheduler()
    jobs = [make_job(f"j{k}", 8, 1000, 1024, created_ms=k) for k in range(5)]
    sched.schedule(st, jobs, 0)
    assert len(parsed) == 5
    for j in jobs:  # the leader rewrote their pending reasons: new store revisions, same jobs
        j.revision += 7
        j.message = "needs 8x any GPU on one node; ..."
    sched.schedule(st, jobs, 1)
    assert len(parsed) == 5
    jobs[0].attempt += 1  # a new attempt (requeued): parsed again
    jobs[1].updated_ms += 5  # any lifecycle step stamps updated_ms
    sched.schedule(st, jobs, 2)
    assert parsed[5:] == ["j0", "j1"]
