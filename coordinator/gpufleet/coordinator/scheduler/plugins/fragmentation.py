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

from gpufleet.coordinator.scheduler.framework import I64, CycleState, Options, normalize
from gpufleet.coordinator.scheduler.mix import F64
from gpufleet.coordinator.scheduler.request import KIND_MIG, MILLI, Request
from gpufleet.coordinator.scheduler.types import MAX_SCORE


def frag_delta(cycle: CycleState, req: Request, opts: Options) -> F64:
    """Increase of expected fragmentation (milli-GPU) per option; lower is better."""
    st = cycle.state
    mix = cycle.mix
    nodes = opts.node
    w = mix.weight
    s_before = st.n_free_milli[nodes].astype(np.float64)
    cpu = st.n_free_cpu[nodes]
    whole = st.n_free_whole[nodes]
    sig_b = st.n_sigma[nodes][:, mix.column].astype(np.float64)  # (C, M)
    if req.kind == "fraction":
        f = st.g_free_milli[nodes, opts.col]
        d = req.milli_per_gpu
        f2 = f - d
        thr = mix.threshold[None, :]
        h_b = np.where(f[:, None] < thr, f[:, None], 0)
        h_a = np.where(f2[:, None] < thr, f2[:, None], 0)
        sig_a = sig_b - h_b + h_a
        whole2 = whole - (f >= MILLI)
        s_after = s_before - d
    else:
        used = req.gpus * MILLI
        sig_a = sig_b
        whole2 = whole - req.gpus
        s_after = s_before - used
    cpu2 = cpu - req.cpu_milli
    k = mix.gpus[None, :]
    inf_b = (cpu[:, None] < mix.cpu[None, :]) | ((k > 0) & (whole[:, None] < k))
    inf_a = (cpu2[:, None] < mix.cpu[None, :]) | ((k > 0) & (whole2[:, None] < k))
    frag_b = np.where(inf_b, s_before[:, None], sig_b)
    frag_a = np.where(inf_a, s_after[:, None], sig_a)
    delta: F64 = (frag_a - frag_b) @ w
    return delta


class Fragmentation:
    name: ClassVar[str] = "Fragmentation"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64:
        if req.kind == KIND_MIG or len(cycle.mix) == 0 or len(opts) == 0:
            return np.full(len(opts), MAX_SCORE, dtype=np.int64)
        return normalize(frag_delta(cycle, req, opts), higher_is_better=False)
