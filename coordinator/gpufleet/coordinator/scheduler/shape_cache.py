"""Per-cycle cache of the best option per node for each request shape (an equivalence-class cache).

Scores are absolute and depend on one node only, and within a cycle the mix is fixed, so for requests with the
same shape the best option of a node stays valid until that node's row changes (``ClusterState.changed_since``).
A placement touches one node, so the next request of the same shape re-filters and re-scores only the nodes
that changed since (a few of them one by one in plain Python, more as one vector evaluation) and keeps the
fleet's best node up to date: a cycle costs a little work per job instead of a pass over the fleet.
Changed nodes that cannot hold the request by their summary columns alone (:func:`may_fit`, a necessary
condition of the filters) are marked infeasible without running the filter chain: on a loaded fleet that is
most of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, B, Candidates, CycleState, Options
from gpufleet.coordinator.scheduler.request import KIND_FRACTION, KIND_MIG, KIND_WHOLE, Request
from gpufleet.coordinator.scheduler.state import ClusterState

NEG = np.iinfo(np.int64).min // 4
# filter and score the nodes of a mask on a (compact) cycle: the surviving options and their total scores
EvaluateOn = Callable[[CycleState, B], tuple[Candidates, Options, I64] | None]
# node slot i's best (total score, GPU column) through the plugins' one-node forms; None: filtered out
EvaluateOne = Callable[[CycleState, int], tuple[int, int] | None]
# changed nodes up to this many are evaluated one by one in plain Python (``filter_one``/``score_one``): a
# vector evaluation costs some fifty numpy calls whatever the row count, one node in Python about a third
ONE_BY_ONE = 6
PRECHECK_ONE_BY_ONE = 64  # up to this many changes, changed nodes are pre-checked one by one too


@dataclass(slots=True)
class _Entry:
    score: I64  # best total score on the node (NEG: infeasible)
    col: I64  # the GPU column of that option (-1: node-level)
    synced: int = -1  # ClusterState.version the scores are valid at (-1: never computed)
    best: int = -1  # node slot of the best score (the first of the best), -1 when every node is NEG


def may_fit(st: ClusterState, req: Request, idx: I64) -> B:
    """Of the node slots ``idx``, those whose summary columns do not rule the request out. A necessary
    condition of GpuFit and Mig, and exactly the conditions of NodeHealth and NodeResources (which then skip
    these nodes: ``CycleState.prechecked``): a node outside it fails a filter, so skipping it changes no
    decision (``tests/unit/coordinator/scheduler/test_state_fastpaths.py`` checks this)."""
    ok: B = st.n_alive[idx] & st.n_ready[idx]
    if req.cpu_milli:
        ok &= st.n_free_cpu[idx] >= req.cpu_milli
    if req.memory_mib:
        ok &= st.n_free_mem[idx] >= req.memory_mib
    if req.kind == KIND_FRACTION:
        ok &= st.n_max_frac[idx] >= req.milli_per_gpu
    elif req.kind == KIND_WHOLE:
        ok &= st.n_free_whole[idx] >= req.gpus
    elif req.kind == KIND_MIG:
        ok &= (st.mig_free_array(req.mig_profile)[idx] > 0).any(axis=1)
    return ok


def may_fit_one(st: ClusterState, req: Request, i: int) -> bool:
    """:func:`may_fit` for node slot ``i`` (the GPU condition first: on a loaded fleet it rules out most)."""
    kind = req.kind
    if kind == KIND_FRACTION:
        if st.n_max_frac[i] < req.milli_per_gpu:
            return False
    elif kind == KIND_WHOLE:
        if st.n_free_whole[i] < req.gpus:
            return False
    elif kind == KIND_MIG and not st.mig_free_array(req.mig_profile)[i].any():
        return False
    if req.cpu_milli and st.n_free_cpu[i] < req.cpu_milli:
        return False
    if req.memory_mib and st.n_free_mem[i] < req.memory_mib:
        return False
    return bool(st.n_alive[i] and st.n_ready[i])


class ShapeCache:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}  # by Request.cache_id
        self._pre: tuple[CycleState, CycleState] | None = None

    def best(
        self,
        cycle: CycleState,
        key: int,
        req: Request,
        evaluate_on: EvaluateOn,
        evaluate_one: EvaluateOne,
    ) -> tuple[int, int] | None:
        """(node slot, GPU column) of the best option, or None when no node fits.

        ``evaluate_on(cycle, mask)`` filters and scores the nodes in ``mask`` and returns the surviving options
        with their total scores (None when none survive); ``evaluate_one(cycle, i)`` gives node slot i's best
        (total score, GPU column), computed one node at a time (None: the node is filtered out); ``req`` is
        the request they are evaluated for. Up to :data:`ONE_BY_ONE` changed nodes go one by one."""
        e = self._sync(cycle, key, req, evaluate_on, evaluate_one)
        return None if e.best < 0 else (e.best, int(e.col[e.best]))

    def per_node(
        self,
        cycle: CycleState,
        key: int,
        req: Request,
        evaluate_on: EvaluateOn,
        evaluate_one: EvaluateOne,
    ) -> tuple[I64, I64]:
        """Every node slot's best total score (NEG: the node cannot take it) and its GPU column, as :meth:`best`
        keeps them (read-only views, valid until the next call): what a gang chooses its members from."""
        e = self._sync(cycle, key, req, evaluate_on, evaluate_one)
        return e.score, e.col

    def _sync(
        self,
        cycle: CycleState,
        key: int,
        req: Request,
        evaluate_on: EvaluateOn,
        evaluate_one: EvaluateOne,
    ) -> _Entry:
        st = cycle.state
        n = st.n
        e = self._entries.get(key)
        if e is None or len(e.score) != n:
            e = self._entries[key] = _Entry(np.full(n, NEG, dtype=np.int64), np.full(n, -1, dtype=np.int64))
        changed = st.changed_since(e.synced) if e.synced >= 0 else None
        e.synced = st.version
        if changed is not None and len(changed) <= PRECHECK_ONE_BY_ONE:
            nodes = sorted(set(changed))
            fit = [i for i in nodes if may_fit_one(st, req, i)]
            if len(fit) <= ONE_BY_ONE:
                self._one_by_one(cycle, e, nodes, fit, evaluate_one)
                return e
            idx = np.array(nodes, dtype=np.int64)
        elif changed is not None:
            mark = np.zeros(n, dtype=np.bool_)
            mark[np.frombuffer(changed, dtype=np.int64)] = True
            idx = np.flatnonzero(mark)
        else:
            idx = np.arange(n, dtype=np.int64)
        if len(idx):
            e.score[idx] = NEG
            e.col[idx] = -1
            idx = idx[may_fit(st, req, idx)]
        if 0 < len(idx) <= ONE_BY_ONE:
            one = self._prechecked(cycle)
            for i in idx.tolist():
                got = evaluate_one(one, i)
                if got is not None:
                    e.score[i], e.col[i] = got
        elif len(idx):
            self._vector(cycle, e, idx, evaluate_on)
        if n == 0:  # an empty fleet: nothing to pick (the caller's filter says why)
            e.best = -1
            return e
        i = int(np.argmax(e.score))
        e.best = i if e.score[i] > NEG else -1
        return e

    def _prechecked(self, cycle: CycleState) -> CycleState:
        """``cycle`` for nodes that passed :func:`may_fit` (one per cycle)."""
        got = self._pre
        if got is None or got[0] is not cycle:
            c = cycle
            got = self._pre = (cycle, CycleState(c.state, c.config, c.now_ms, c.mix, c.notes, c.memo, prechecked=True))
        return got[1]

    def _one_by_one(
        self,
        cycle: CycleState,
        e: _Entry,
        nodes: list[int],
        fit: list[int],
        evaluate_one: EvaluateOne,
    ) -> None:
        """Update the changed ``nodes`` (``fit``: those passing :func:`may_fit`) and the best node."""
        one = self._prechecked(cycle)
        rescan = False
        best, top = e.best, (int(e.score[e.best]) if e.best >= 0 else NEG)
        for i in nodes:
            got = evaluate_one(one, i) if i in fit else None
            score, col = got if got is not None else (NEG, -1)
            e.score[i], e.col[i] = score, col
            if i == best:
                rescan = True  # the best node changed: any node may be the best now
            elif score > top or (score == top and score > NEG and i < best):
                best, top = i, score
        if rescan:
            best = int(np.argmax(e.score))
            top = int(e.score[best])
        e.best = best if top > NEG else -1

    @staticmethod
    def _vector(
        cycle: CycleState,
        e: _Entry,
        idx: I64,
        evaluate_on: EvaluateOn,
    ) -> None:
        # filter and score a compact copy of the changed rows (a slice when they are contiguous)
        st = cycle.state
        sub = CycleState(st.rows(idx), cycle.config, cycle.now_ms, cycle.mix, cycle.notes, prechecked=True)
        got = evaluate_on(sub, np.ones(len(idx), dtype=np.bool_))
        if got is None:
            return
        _, opts, scores = got
        if int(opts.col[0]) < 0:  # node-level options: one per node
            nodes_u, best_score, best_col = opts.node, scores, opts.col
        elif opts.node[0] == opts.node[-1]:  # one node: its best option (first of the best)
            b = int(np.argmax(scores))
            nodes_u, best_score, best_col = opts.node[:1], scores[b : b + 1], opts.col[b : b + 1]
        else:  # per node its first best column: scores on a (rows, G) grid, argmax per row
            lo = int(opts.node[0])
            span = int(opts.node[-1]) + 1 - lo
            grid = np.full((span, st.G), NEG, dtype=np.int64)
            grid[opts.node - lo, opts.col] = scores
            cols = grid.argmax(axis=1)
            best = grid[np.arange(span), cols]
            has = best > NEG
            nodes_u, best_score, best_col = lo + np.flatnonzero(has), best[has], cols[has]
        target = idx[nodes_u]
        e.score[target] = best_score
        e.col[target] = best_col
