"""Scheduler.schedule: one pure scheduling cycle over a ClusterState and the pending queue.

For each job in queue order (``queue.py``): pre-filters (budget, deadline, quota limit), vectorized filters,
weighted integer scores over all options at once, reserve (in the state's undo log), permit (gangs). A job
that does not fit may preempt (``preemption.py``) or, for MIG, wait on a re-layout (``mig_relayout.py``);
otherwise it gets a reason a human can act on. Requests with the same shape that already failed in this
cycle are answered from a cache: within a cycle capacity only shrinks (until a preemption frees some).
At the end every reservation is rolled back, so the state is untouched and the Plan is the only output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator.scheduler import mig_relayout, placement, preemption, queue
from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.framework import (
    I64,
    B,
    Candidates,
    CycleState,
    Options,
    PreFilterPlugin,
    Profile,
    sorted_runs,
)
from gpufleet.coordinator.scheduler.mix import MixClasses, WorkloadMix
from gpufleet.coordinator.scheduler.placement import Member
from gpufleet.coordinator.scheduler.plugins.constraints import PlacementConstraints
from gpufleet.coordinator.scheduler.plugins.mig import models_with_profile
from gpufleet.coordinator.scheduler.profiles import DEFAULT_PROFILE
from gpufleet.coordinator.scheduler.request import KIND_FRACTION, KIND_MIG, KIND_WHOLE, Request, request_from_job
from gpufleet.coordinator.scheduler.shape_cache import NEG, ShapeCache
from gpufleet.coordinator.scheduler.state import ClusterState
from gpufleet.coordinator.scheduler.types import (
    SKIP,
    SUCCESS,
    MigRelayout,
    Placement,
    Plan,
    Preemption,
    Result,
    Status,
)
from gpufleet.proto.v1 import types_pb2 as pb

MIX_MIN_SAMPLES = 50


_CODES = {"Budget": "BUDGET", "Deadline": "DEADLINE", "Quota": "QUOTA"}


@dataclass(slots=True)
class _Cycle:
    plan: Plan
    running: dict[str, pb.Job]
    failed: dict[int, tuple[str, str]]  # Request.cache_id -> (code, reason) of shapes that did not fit
    taken: set[str]
    cache: ShapeCache
    pre_filters: tuple[PreFilterPlugin, ...]
    placed: int = 0


class Scheduler:
    def __init__(self, profile: Profile | None = None, config: SchedulerConfig | None = None) -> None:
        self.profile = profile or DEFAULT_PROFILE
        self.config = config or SchedulerConfig()
        # parsed requests of pending jobs, memoized across cycles by id and (updated_ms, attempt, priority_value,
        # created_ms): what a request is made of (spec, priority, creation) is set when the job is created and
        # every lifecycle step stamps updated_ms, while the store revision also moves when only the job's pending
        # reason is rewritten (which would re-parse thousands of jobs a cycle); parsing 10,000 protobufs per
        # cycle would dominate the cycle
        self._requests: dict[str, tuple[tuple[int, int, int, int], Request]] = {}
        # per-node best options per request shape, valid while the state object and the mix classes are the
        # same ones (node rows changed since are re-evaluated: ClusterState.changed_since)
        self._carry: tuple[int, MixClasses, ShapeCache, dict[str, object]] | None = None
        # _never_fits answers per request shape, valid while (state uid, ClusterState.nodes_version) is the same
        self._never: tuple[tuple[int, int], dict[tuple[object, ...], bool]] = ((0, 0), {})

    # ------------------------------------------------------------------ public
    def schedule(
        self, state: ClusterState, pending: Sequence[pb.Job], now_ms: int, running: Sequence[pb.Job] = ()
    ) -> Plan:
        plan = Plan()
        reqs: list[Request] = []
        memo: dict[str, tuple[tuple[int, int, int, int], Request]] = {}
        known = self._requests.get
        for job in pending:
            stamp = (job.updated_ms, job.attempt, job.priority_value, job.created_ms)
            job_id = job.id
            hit = known(job_id)
            if hit is not None and hit[0] == stamp:
                memo[job_id] = hit
                reqs.append(hit[1])
                continue
            try:
                req = request_from_job(job)
            except InvalidInputError as e:
                plan.unplaced[job.id] = f"invalid job spec: {e}"
                plan.codes[job.id] = Status.ERROR.value
                continue
            memo[job.id] = (stamp, req)
            reqs.append(req)
        self._requests = memo
        mix = state.mix
        if mix.total < MIX_MIN_SAMPLES:
            extra = WorkloadMix()
            for r in reqs:
                extra.add(r.milli_per_gpu, r.gpus, r.cpu_milli)
            mix = mix.merged(extra)
        classes = mix.classes()
        carry = self._carry
        if carry is None or carry[0] != state.uid or carry[1] is not classes:
            carry = self._carry = (state.uid, classes, ShapeCache(), {})
        cycle = CycleState(state, self.config, now_ms, classes, carry[3])
        pre = tuple(p for p in self.profile.pre_filter if p.enabled(self.config))
        run = _Cycle(plan, {j.id: j for j in running}, {}, set(), carry[2], pre)
        ahead: dict[str, int] = {}
        one = self._one
        state.begin()
        try:
            for pos, req in enumerate(queue.order(reqs, state, self.config)):
                team = req.team
                team_ahead = ahead.get(team, 0)
                ahead[team] = team_ahead + 1
                one(cycle, run, req, pos, team_ahead)
        finally:
            state.rollback()
        return plan

    # ------------------------------------------------------------------ one job
    def _one(self, cycle: CycleState, run: _Cycle, req: Request, pos: int, team_ahead: int) -> None:
        plan = run.plan
        cap = self.config.max_placements_per_cycle
        if cap and run.placed >= cap:
            self._unplace(
                cycle, run, req, Result(Status.WAIT, "cycle placement limit reached; next cycle"), None, pos, team_ahead
            )
            return
        for p in run.pre_filters:
            r = p.pre_filter(cycle, req)
            if r is not SUCCESS and r is not SKIP and not r.ok:
                plan.unplaced[req.job_id] = r.reason
                plan.codes[req.job_id] = _CODES.get(r.plugin, r.status.value)
                return
        key = req.cache_id
        cached = run.failed.get(key)
        if cached is not None:
            plan.unplaced[req.job_id] = cached[1] + self._job_note(cycle, req, pos, team_ahead)
            plan.codes[req.job_id] = cached[0]
            return
        if self._cacheable(req):

            def evaluate_on(cyc: CycleState, mask: B) -> tuple[Candidates, Options, I64] | None:
                return self._evaluate(cyc, req, mask)

            def evaluate_one(cyc: CycleState, i: int) -> tuple[int, int] | None:
                return self._evaluate_one(cyc, req, i)

            if req.nodes > 1:  # a gang: its members from every node's best option (a failure re-checks below)
                score, col = run.cache.per_node(cycle, key, req, evaluate_on, evaluate_one)
                nodes_u = np.flatnonzero(score > NEG)
                members = self._gang(cycle, req, nodes_u, score[nodes_u], col[nodes_u], None) if len(nodes_u) else []
                if members and self._commit(cycle, run, req, members):
                    return
            else:
                pick = run.cache.best(cycle, key, req, evaluate_on, evaluate_one)
                if pick is not None:
                    mps = self.config.fractional_mode == "mps"
                    m = placement.member(cycle.state, req, pick[0], pick[1], None, mps)
                    if self._commit(cycle, run, req, [m]):
                        return
        res, cand = self.filter(cycle, req)
        if res.ok and self._place(cycle, run, req, cand):
            return
        if (
            not res.ok
            and req.kind == KIND_MIG
            and res.status == Status.UNSCHEDULABLE
            and len(plan.mig_relayouts) < self.config.max_mig_relayouts_per_cycle
        ):
            base = cycle.notes.get("pre_gpu_nodes")
            if isinstance(base, np.ndarray):
                choice = mig_relayout.plan(cycle.state, req, base)
                if choice is not None:
                    node = cycle.state.names[choice.node]
                    gpu_index = cycle.state.gpu_index[choice.node][choice.col]
                    plan.mig_relayouts.append(
                        MigRelayout(node, gpu_index, choice.profiles, req.job_id, choice.cost, choice.starts)
                    )
                    cycle.state.block_gpu(choice.node, choice.col)
                    plan.unplaced[req.job_id] = (
                        f"{req.describe()}; waiting for node {node} GPU {gpu_index} to be re-laid-out as "
                        f"[{', '.join(choice.profiles)}] to create a free {req.mig_profile} slice"
                    )
                    plan.codes[req.job_id] = Status.WAIT.value
                    return
        gang_short = res.ok and req.nodes > 1  # members fit on some nodes, but too few in any one region
        if self.config.preemption and ((not res.ok and res.status == Status.UNSCHEDULABLE) or gang_short):
            st = cycle.state
            mark = st.mark()
            note = cycle.notes.get("gang_note")
            victims = preemption.find(
                cycle,
                req,
                run.running,
                run.taken,
                lambda mask: self.filter(cycle, req, mask)[0].ok,
                cand.node.copy() if res.ok else None,
            )
            if victims:
                res2, cand2 = self.filter(cycle, req)
                if res2.ok and self._place(cycle, run, req, cand2):
                    for v in victims:
                        run.taken.add(v.job_id)
                        plan.preemptions.append(Preemption(v.job_id, v.reason, req.job_id))
                    run.failed.clear()  # capacity grew
                    cycle.notes.pop("gang_note", None)
                    return
                st.rollback(mark)  # the victims stay: the job would not have been placed anyway
                if note is None:
                    cycle.notes.pop("gang_note", None)
                else:
                    cycle.notes["gang_note"] = note
        if res.ok:  # filters passed but no gang grouping worked
            res = Result(Status.UNSCHEDULABLE, str(cycle.notes.pop("gang_note", "no placement")), "Gang")
        elif res.status == Status.UNSCHEDULABLE and self._never_fits_memo(cycle, req):
            res = Result(Status.UNRESOLVABLE, "no node in the cluster could ever hold it", res.plugin)
        self._unplace(cycle, run, req, res, cand, pos, team_ahead, key)

    def filter(self, cycle: CycleState, req: Request, mask: B | None = None) -> tuple[Result, Candidates]:
        st = cycle.state
        if cycle.prechecked and mask is not None:
            node = mask.copy()  # the summary check kept live nodes only
        else:
            node = st.n_alive[: st.n].copy()
            if mask is not None:
                node &= mask
        cand = Candidates(node)
        if req.kind == KIND_MIG:
            cycle.notes.pop("pre_gpu_nodes", None)
        for f in self.profile.filter:
            if f.name in ("GpuFit", "Mig") and req.kind == KIND_MIG:
                cycle.notes["pre_gpu_nodes"] = cand.node.copy()
            r = f.filter(cycle, req, cand)
            if not r.ok:
                return r, cand
        return SUCCESS, cand

    # ------------------------------------------------------------------ choose and reserve
    def _cacheable(self, req: Request) -> bool:
        if not self.profile.node_local_scores:
            return False
        q = self.config.team_quota(req.team)
        return q is None or not q.per_model

    def _evaluate(self, cycle: CycleState, req: Request, mask: B) -> tuple[Candidates, Options, I64] | None:
        res, cand = self.filter(cycle, req, mask)
        if not res.ok:
            return None
        opts = placement.options(req, cand)
        if len(opts) == 0:
            return None
        return cand, opts, self._scores(cycle, req, opts)

    def _evaluate_one(self, cycle: CycleState, req: Request, i: int) -> tuple[int, int] | None:
        """Node slot i's best option (total score, GPU column; -1 for a node-level option) through the plugins'
        one-node forms, or None when a filter drops the node: what ``_evaluate`` gives for that node."""
        cols: list[int] | None = None
        for f in self.profile.filter:
            fit = f.filter_one(cycle, req, i)
            if fit is False:
                return None
            if fit is not True:
                cols = fit
        if cols is None or req.kind not in (KIND_FRACTION, KIND_MIG):
            cols = [-1]
        total = [0] * len(cols)
        for plugin, weight in self.profile.score:
            s = plugin.score_one(cycle, req, i, cols)
            if s is None:
                continue
            if isinstance(s, int):
                total = [t + weight * s for t in total]
            else:
                total = [t + weight * x for t, x in zip(total, s, strict=True)]
        best = max(range(len(total)), key=total.__getitem__)  # the first of the best, as argmax
        return total[best], cols[best]

    def _place(self, cycle: CycleState, run: _Cycle, req: Request, cand: Candidates) -> bool:
        members = self._choose(cycle, req, cand)
        if not members:
            return False
        return self._commit(cycle, run, req, members)

    def _commit(self, cycle: CycleState, run: _Cycle, req: Request, members: list[Member]) -> bool:
        st = cycle.state
        mark = st.mark()
        for m in members:
            st.reserve(m.alloc, req.team, m.model_milli)
        for p in self.profile.permit:
            r = p.permit(cycle, req, len(members))
            if not r.ok:
                st.rollback(mark)
                cycle.notes["gang_note"] = r.reason
                return False
        assigns = placement.assignments(st, req, members, self.config.gang_base_port)
        run.plan.placements.append(Placement(req.job_id, assigns))
        run.placed += 1
        return True

    def _scores(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        total: I64 | None = None
        for plugin, weight in self.profile.score:
            s = plugin.score(cycle, req, opts)
            if s is not None:
                total = weight * s if total is None else total + weight * s
        return total if total is not None else np.zeros(len(opts), dtype=np.int64)

    def _choose(self, cycle: CycleState, req: Request, cand: Candidates) -> list[Member]:
        st = cycle.state
        opts = placement.options(req, cand)
        if len(opts) == 0:
            return []
        scores = self._scores(cycle, req, opts)
        mps = self.config.fractional_mode == "mps"
        if req.nodes <= 1:
            b = int(np.argmax(scores))
            return [placement.member(st, req, int(opts.node[b]), int(opts.col[b]), cand.gpu, mps)]
        # gang: the best option per node (the first of the best), then the members from those nodes
        order = np.lexsort((-scores, opts.node))
        nodes_u, first, _ = sorted_runs(opts.node[order])
        best_opt = order[first]
        return self._gang(cycle, req, nodes_u, scores[best_opt], opts.col[best_opt], cand.gpu)

    def _gang(
        self, cycle: CycleState, req: Request, nodes_u: I64, node_score: I64, node_col: I64, fits: B | None
    ) -> list[Member]:
        """Gang members on ``req.nodes`` of the nodes ``nodes_u`` (ascending; each with its best score and GPU
        column): the best-scoring nodes of one region, a zone holding them all preferred. [] with
        ``cycle.notes["gang_note"]`` saying why when no region has enough of them."""
        st = cycle.state
        mps = self.config.fractional_mode == "mps"
        regions = st.n_region[nodes_u]
        zones = st.n_zone[nodes_u]
        best: tuple[tuple[int, int], I64] | None = None
        most = 0
        for region in np.unique(regions):
            in_region = np.flatnonzero(regions == region)
            most = max(most, len(in_region))
            if len(in_region) < req.nodes:
                continue
            groups = [(0, in_region)]
            for zone in np.unique(zones[in_region]):
                in_zone = in_region[zones[in_region] == zone]
                if len(in_zone) >= req.nodes:
                    groups.append((1, in_zone))
            for zone_ok, g in groups:
                top = g[np.lexsort((nodes_u[g], -node_score[g]))][: req.nodes]
                k = (zone_ok, int(node_score[top].sum()))
                if best is None or k > best[0]:
                    best = (k, top)
        if best is None:
            cycle.notes["gang_note"] = (
                f"{len(nodes_u)} nodes could each hold a member but no region has {req.nodes} of them "
                f"(the best region has {most})"
            )
            return []
        return [placement.member(st, req, int(nodes_u[t]), int(node_col[t]), fits, mps) for t in best[1]]

    # ------------------------------------------------------------------ reasons
    def _never_fits_memo(self, cycle: CycleState, req: Request) -> bool:
        """:meth:`_never_fits`, remembered per request shape while the nodes stay the same (it reads only
        what node upserts change)."""
        st = cycle.state
        stamp = (st.uid, st.nodes_version)
        if self._never[0] != stamp:
            self._never = (stamp, {})
        memo = self._never[1]
        got = memo.get(req.shape_key)
        if got is None:
            got = memo[req.shape_key] = self._never_fits(cycle, req)
        return got

    def _never_fits(self, cycle: CycleState, req: Request) -> bool:
        """True when no node of the cluster as it is could hold the request even if it were empty."""
        st = cycle.state
        n = st.n
        cand = Candidates(st.n_alive[:n].copy())
        PlacementConstraints().filter(cycle, req, cand)
        ok = cand.node & (st.n_cpu[:n] >= req.cpu_milli) & (st.n_mem[:n] >= req.memory_mib)
        if req.kind in (KIND_FRACTION, KIND_WHOLE):
            g = st.g_valid[:n] & st.g_healthy[:n] & ~st.g_mig[:n]
            if req.models:
                g &= np.isin(st.g_model[:n], [st.models.ids[m] for m in req.models if m in st.models.ids])
            if req.mem_mib:
                g &= st.g_total_mib[:n] >= req.mem_mib
            ok &= g.sum(axis=1) >= req.gpus
        elif req.kind == KIND_MIG:
            models = models_with_profile(req.mig_profile, req.models)
            ids = [st.models.ids[m] for m in models if m in st.models.ids]
            ok &= (st.g_valid[:n] & st.g_mig[:n] & np.isin(st.g_model[:n], ids)).any(axis=1)
        if req.nodes > 1:
            counts = np.bincount(st.n_region[:n][ok], minlength=1) if ok.any() else np.zeros(1, dtype=np.int64)
            return bool(counts.max() < req.nodes)
        return not bool(ok.any())

    @staticmethod
    def _job_note(cycle: CycleState, req: Request, pos: int, team_ahead: int) -> str:
        """The per-job tail of a pending job's reason."""
        note = ""
        if req.deadline_ms:
            note += f"; deadline in {(req.deadline_ms - cycle.now_ms) / 1000:.0f}s"
        if pos:
            note += f"; {pos} jobs ahead in the queue ({team_ahead} of team {req.team or '(none)'})"
        return note

    def _unplace(
        self,
        cycle: CycleState,
        run: _Cycle,
        req: Request,
        res: Result,
        cand: Candidates | None,
        pos: int,
        team_ahead: int,
        key: int | None = None,
    ) -> None:
        parts = [req.describe()]
        if res.reason:
            parts.append(res.reason)
        if cand is not None:
            if cand.eliminated:
                parts.append("; ".join(f"{c} nodes {why}" for why, c in cand.eliminated[-3:]))
            if cand.near_miss:
                parts.append(cand.near_miss)
        if res.status == Status.UNRESOLVABLE:
            parts.append("it will not fit until nodes that can hold it join")
        reason = "; ".join(parts)
        code = _CODES.get(res.plugin, res.status.value)
        if key is not None:
            run.failed[key] = (code, reason)
        run.plan.unplaced[req.job_id] = reason + self._job_note(cycle, req, pos, team_ahead)
        run.plan.codes[req.job_id] = code
