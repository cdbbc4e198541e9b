"""Per-cycle cache of the best option per node for each request shape (an equivalence-class cache).

Scores are absolute and depend on one node only, and within a cycle the mix is fixed, so for requests with the
same shape the best option of a node stays valid until that node's row changes (``ClusterState.n_version``).
A placement touches one node, so the next request of the same shape re-filters and re-scores only the nodes
that changed since: a cycle costs a few small vector operations per job instead of a pass over the fleet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, B, Candidates, CycleState, Options, sorted_runs

NEG = np.iinfo(np.int64).min // 4
COMPACT_BELOW = 64


@dataclass(slots=True)
class _Entry:
    version: I64  # node version the row was computed at (-1: never)
    score: I64  # best total score on the node (NEG: infeasible)
    col: I64  # the GPU column of that option (-1: node-level)


class ShapeCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[object, ...], _Entry] = {}

    def best(
        self,
        cycle: CycleState,
        key: tuple[object, ...],
        evaluate_on: Callable[[CycleState, B], tuple[Candidates, Options, I64] | None],
    ) -> tuple[int, int] | None:
        """(node slot, GPU column) of the best option, or None when no node fits.

        ``evaluate_on(cycle, mask)`` filters and scores the nodes in ``mask`` and returns the surviving options
        with their total scores (None when none survive)."""
        st = cycle.state
        n = st.n
        e = self._entries.get(key)
        if e is None or len(e.version) != n:
            e = _Entry(np.full(n, -1, dtype=np.int64), np.full(n, NEG, dtype=np.int64), np.full(n, -1, dtype=np.int64))
            self._entries[key] = e
        ver = st.n_version[:n]
        dirty = ver != e.version
        idx = np.flatnonzero(dirty)
        if len(idx):
            e.score[idx] = NEG
            e.col[idx] = -1
            e.version[idx] = ver[idx]
            if len(idx) <= COMPACT_BELOW:
                # few changed nodes: filter and score a compact copy of their rows
                sub = CycleState(st.rows(idx), cycle.config, cycle.now_ms, cycle.mix, cycle.notes)
                got = evaluate_on(sub, np.ones(len(idx), dtype=np.bool_))
                remap: I64 | None = idx
            else:
                got = evaluate_on(cycle, dirty)
                remap = None
            if got is not None:
                _, opts, scores = got
                if opts.node[0] == opts.node[-1]:  # one node: its best option (first of the best)
                    nodes_u, pick = opts.node[:1], np.array([int(np.argmax(scores))])
                else:
                    order = np.lexsort((-scores, opts.node))
                    nodes_u, first, _ = sorted_runs(opts.node[order])
                    pick = order[first]
                target = remap[nodes_u] if remap is not None else nodes_u
                e.score[target] = scores[pick]
                e.col[target] = opts.col[pick]
        if n == 0:  # an empty fleet: nothing to pick (the caller's filter says why)
            return None
        i = int(np.argmax(e.score))
        if e.score[i] == NEG:
            return None
        return i, int(e.col[i])
