"""The scheduler's fast paths give the same answers as the plain computations they replace.

A cycle leaves the state exactly as it found it (rollback recomputes each touched node once), a compact row
view reads the same values as indexing the fleet arrays, a MIG re-layout answered from the memo is the
one computed from scratch, and the shape cache's summary pre-check never drops a node the filters accept.
"""

from __future__ import annotations

import random

import numpy as np

from gpufleet.coordinator.scheduler import ClusterState, Scheduler, mig_relayout
from gpufleet.coordinator.scheduler.framework import CycleState
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
