"""Fragmentation score in the spirit of FGD (Weng et al., "Beware of Fragmentation", USENIX ATC'23).

For a node and a class m of the recent request mix, the fragment is the free GPU share that class m could not
use there: all of it when the class cannot run on the node at all (too little CPU, fewer idle GPUs than it
needs), otherwise the free share of GPUs with less free than the class's per-GPU need. The node's expected
fragmentation is the mix-weighted sum; an option scores higher the less it *increases* that sum (the
"gradient"). Computed for every option at once as an (options x classes) matrix from per-node running sums
(``ClusterState.n_sigma``), so a cycle costs a few array operations per job.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options
from gpufleet.coordinator.scheduler.mix import F64
from gpufleet.coordinator.scheduler.request import KIND_MIG, MILLI, Request
from gpufleet.coordinator.scheduler.types import MAX_SCORE


def frag_delta(cycle: CycleState, req: Request, opts: Options) -> F64:
    """Increase of expected fragmentation (milli-GPU) per option; lower is better.

    Placing only shrinks free resources, so a class infeasible before stays infeasible. Per class m the
    change is: -d if m was already infeasible on the node; S - d - sigma_m if the placement makes it
    infeasible; h_m(f - d) - h_m(f) (GPU level, h_m(f) = f if f < threshold_m else 0) if it stays feasible.
    The node-level terms are computed per node, the GPU-level term from a per-request lookup table over f.
    """
    st = cycle.state
    mix = cycle.mix
    w = mix.weight
    nodes_u, inv = np.unique(opts.node, return_inverse=True)
    s = st.n_free_milli[nodes_u].astype(np.float64)
    cpu = st.n_free_cpu[nodes_u]
    whole = st.n_free_whole[nodes_u]
    sig = st.n_sigma[nodes_u][:, mix.column].astype(np.float64)  # (U, M)
    k = mix.gpus[None, :]
    need_cpu = mix.cpu[None, :]
    inf_b = (cpu[:, None] < need_cpu) | ((k > 0) & (whole[:, None] < k))
    cpu_short = (cpu - req.cpu_milli)[:, None] < need_cpu
    if req.kind != "fraction":
        d = req.gpus * MILLI
        inf_a = cpu_short | ((k > 0) & ((whole - req.gpus)[:, None] < k))
        term = np.where(inf_b, -float(d), np.where(inf_a, s[:, None] - d - sig, 0.0))
        node_delta: F64 = term @ w
        return node_delta[inv]
    d = req.milli_per_gpu
    f = st.g_free_milli[opts.node, opts.col]
    # two node variants: the chosen GPU was idle (one fewer idle GPU after) or already shared
    out = np.empty(len(opts), dtype=np.float64)
    grid = np.arange(MILLI + 1, dtype=np.int64)
    thr = mix.threshold[None, :]
    after = np.maximum(grid - d, 0)[:, None]
    gtab = np.where(after < thr, after, 0) - np.where(grid[:, None] < thr, grid[:, None], 0)  # (1001, M)
    for idle in (False, True):
        sel = (f >= MILLI) if idle else (f < MILLI)
        if not sel.any():
            continue
        inf_a = cpu_short | ((k > 0) & ((whole - int(idle))[:, None] < k))
        node_term: F64 = np.where(inf_b, -float(d), np.where(inf_a, s[:, None] - d - sig, 0.0)) @ w
        wfeas = np.where(inf_a, 0.0, w[None, :])  # (U, M)
        rows = inv[sel]
        gpu_term = np.einsum("cm,cm->c", wfeas[rows], gtab[f[sel]])
        out[sel] = node_term[rows] + gpu_term
    return out


class Fragmentation:
    name: ClassVar[str] = "Fragmentation"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        if req.kind == KIND_MIG or len(cycle.mix) == 0 or len(opts) == 0:
            return np.full(len(opts), MAX_SCORE, dtype=np.int64)
        # 1 point per milli-GPU of expected stranded capacity above the best option (not min-max scaled:
        # one outlier option must not flatten the differences between the good ones)
        delta = frag_delta(cycle, req, opts)
        excess = np.clip(delta - delta.min(), 0, MAX_SCORE)
        out: I64 = (MAX_SCORE - np.rint(excess)).astype(np.int64)
        return out
