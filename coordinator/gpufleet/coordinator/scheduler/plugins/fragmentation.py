"""Fragmentation score in the spirit of FGD (Weng et al., "Beware of Fragmentation", USENIX ATC'23).

For a node and a class m of the recent request mix, the fragment is the free GPU share that class m could not
use there: all of it when the class cannot run on the node at all (too little CPU, fewer idle GPUs than it
needs), otherwise the free share of GPUs with less free than the class's per-GPU need. The node's expected
fragmentation is the mix-weighted sum; an option scores higher the less it *increases* that sum (the
"gradient"). Computed for every option at once as an (options x classes) matrix from per-node running sums
(``ClusterState.n_sigma``), so a cycle costs a few array operations per job.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gpufleet.coordinator.scheduler.framework import I64, B, CycleState, Options, sorted_runs
from gpufleet.coordinator.scheduler.mix import F64
from gpufleet.coordinator.scheduler.request import KIND_MIG, MILLI, Request


def frag_delta(cycle: CycleState, req: Request, opts: Options) -> F64:
    """Increase of expected fragmentation (milli-GPU) per option; lower is better.

    Placing only shrinks free resources, so a class infeasible before stays infeasible. Per class m the
    change is: -d if m was already infeasible on the node; S - d - sigma_m if the placement makes it
    infeasible; h_m(f - d) - h_m(f) (GPU level, h_m(f) = f if f < threshold_m else 0) if it stays feasible.
    The node-level terms are computed per node, the GPU-level term from a per-request lookup table over f.
    """
    st = cycle.state
    mix = cycle.mix
    k, kpos, need_cpu, count_row = _mix_rows(cycle)
    count = mix.count
    # node-level terms are computed once per node row U and read per option through ``inv``
    n = st.n
    rows: I64 | slice
    inv: I64 | slice
    if int(opts.col[0]) < 0:  # node-level options (whole GPUs): one per node already
        rows, inv = opts.node, slice(None)
    elif n <= 2 * len(opts):  # most rows have options (compact views): every row, no grouping needed
        rows, inv = slice(0, n), opts.node
    elif opts.node[0] == opts.node[-1]:  # one node (options come sorted by node)
        rows, inv = opts.node[:1], np.zeros(len(opts), dtype=np.int64)
    else:
        rows, _, runs = sorted_runs(opts.node)
        inv = np.cumsum(runs) - 1
    # the class-weighted sums are integers (class counts x milli), divided by the mix size once at the end:
    # exact, so any evaluation order gives the same score
    s = st.n_free_milli[rows]
    cpu = st.n_free_cpu[rows]
    whole = st.n_free_whole[rows]
    sig = st.sigma_at(rows, mix.column)  # (U, M)
    inf_b = (cpu[:, None] < need_cpu) | (kpos & (whole[:, None] < k))
    cpu_short = (cpu - req.cpu_milli)[:, None] < need_cpu
    if req.kind != "fraction":
        d = req.gpus * MILLI
        inf_a = cpu_short | (kpos & ((whole - req.gpus)[:, None] < k))
        term = np.where(inf_b, -d, np.where(inf_a, s[:, None] - d - sig, 0))
        node_delta: F64 = (term @ count) / mix.count_total + _cpu_strand(cycle, req, s, cpu, d)
        return node_delta[inv]
    d = req.milli_per_gpu
    f = st.g_free_milli[opts.node, opts.col]
    # two node variants: the chosen GPU was already shared (v=0) or idle (v=1: one fewer idle GPU after);
    # both are computed at once as a (2, U, M) stack and each option reads the row of its own variant
    gtab = _gpu_table(cycle, d)
    idle = f >= MILLI
    after_whole = whole[None, :] - _VARIANTS  # (2, U)
    inf_a = cpu_short[None] | (kpos & (after_whole[:, :, None] < k))  # (2, U, M)
    node_term: I64 = np.where(inf_b[None], -d, np.where(inf_a, (s[:, None] - d - sig)[None], 0)) @ count
    wfeas = np.where(inf_a, 0, count_row)  # (2, U, M)
    # row of each option in the flattened (2U, ...) stack: its variant's block, its node's row
    row = inv + node_term.shape[1] * idle
    m = wfeas.shape[2]
    if len(row) > DEDUPE_ABOVE:
        # many options (a fleet seen for the first time): GPUs of one node with the same free share have the
        # same term, so compute each distinct (row, free) pair once
        pair = row * (MILLI + 1) + f
        uniq, back = np.unique(pair, return_inverse=True)
        urow, uf = np.divmod(uniq, MILLI + 1)
        gpu_term = np.einsum("cm,cm->c", wfeas.reshape(-1, m).take(urow, axis=0), gtab.take(uf, axis=0))[back]
    else:
        gpu_term = np.einsum("cm,cm->c", wfeas.reshape(-1, m).take(row, axis=0), gtab.take(f, axis=0))
    out: F64 = (node_term.reshape(-1).take(row) + gpu_term) / mix.count_total
    return out + _cpu_strand(cycle, req, s, cpu, d)[inv]


def frag_delta_one(cycle: CycleState, req: Request, i: int, cols: list[int]) -> list[float]:
    """:func:`frag_delta` for the options of node slot ``i`` (GPU columns, or ``[-1]``), in plain Python: the
    same integer sums, divided and offset by the same float operations, so the same numbers.

    Fraction classes (no whole GPUs) are infeasible on a node exactly when they need more CPU than it has, so,
    sorted by CPU need, the infeasible ones are a suffix (bisect) and the feasible ones a prefix whose GPU-level
    term comes from per-prefix threshold tables (:class:`_OneMix`); only whole-GPU classes and the classes
    the placement itself makes infeasible are visited one by one."""
    st = cycle.state
    fm = _one_mix(cycle)
    s = int(st.n_free_milli[i])
    cpu = int(st.n_free_cpu[i])
    whole = int(st.n_free_whole[i])
    sig = st.n_sigma[i].tolist()
    cpu_after = cpu - req.cpu_milli
    total = cycle.mix.count_total
    fraction = req.kind == "fraction"
    d = req.milli_per_gpu if fraction else req.gpus * MILLI
    strand = _cpu_strand_one(cycle, req, s, cpu, d)
    ib = bisect.bisect_right(fm.needs0, cpu)  # fraction classes from ib on were infeasible already
    ia = bisect.bisect_right(fm.needs0, cpu_after)  # from ia on they are after the placement
    node0 = -d * fm.suffix0[ib]
    for m in range(ia, ib):
        node0 += fm.count0[m] * (s - d - sig[fm.col0[m]])
    if not fraction:
        node_k = 0
        whole_after = whole - req.gpus
        for k, need, cnt, _, col in fm.whole:
            if cpu < need or whole < k:
                node_k -= d * cnt
            elif cpu_after < need or whole_after < k:
                node_k += (s - d - sig[col]) * cnt
        return [(node0 + node_k) / total + strand] * len(cols)
    thr0, above0 = fm.thresholds[ia]
    free = st.g_free_milli[i].tolist()
    variants: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    terms: dict[int, float] = {}
    out: list[float] = []
    for c in cols:
        f = free[c]
        got = terms.get(f)
        if got is None:
            v = 1 if f >= MILLI else 0  # an idle GPU: one fewer idle GPU after
            var = variants.get(v)
            if var is None:
                node_k = 0
                feasible: list[tuple[int, int]] = []  # (count, threshold) of whole-GPU classes feasible after
                for k, need, cnt, thr, col in fm.whole:
                    if cpu_after < need or whole - v < k:
                        if cpu < need or whole < k:
                            node_k -= d * cnt
                        else:
                            node_k += (s - d - sig[col]) * cnt
                    else:
                        feasible.append((cnt, thr))
                var = variants[v] = (node0 + node_k, feasible)
            after = f - d if f > d else 0
            # h(x) = x below the threshold, else 0; h(after) - h(f) is after - f for thresholds above f,
            # after for thresholds in (after, f], 0 below
            above_f = above0[bisect.bisect_right(thr0, f)]
            gpu_num = (after - f) * above_f + after * (above0[bisect.bisect_right(thr0, after)] - above_f)
            for cnt, thr in var[1]:
                gpu_num += cnt * ((after if after < thr else 0) - (f if f < thr else 0))
            got = terms[f] = (var[0] + gpu_num) / total + strand
        out.append(got)
    return out


@dataclass(frozen=True, slots=True)
class _OneMix:
    """The mix's classes arranged for :func:`frag_delta_one`; cached with the classes."""

    needs0: list[int]  # CPU need of each fraction class (no whole GPUs), ascending
    count0: list[int]
    col0: list[int]  # its n_sigma column
    suffix0: list[int]  # suffix0[p]: the counts of fraction classes p.. summed
    # per prefix length p of the fraction classes: their thresholds ascending, and above[j] = the counts of
    # thresholds j.. summed (so the count of classes in the prefix with a threshold above x is
    # above[bisect_right(thresholds, x)])
    thresholds: list[tuple[list[int], list[int]]]
    whole: list[tuple[int, int, int, int, int]]  # (gpus, cpu, count, threshold, column) of whole-GPU classes


def _one_mix(cycle: CycleState) -> _OneMix:
    got = cycle.notes.get("frag_one_mix")
    mix = cycle.mix
    if isinstance(got, tuple) and got[0] is mix:
        cached: _OneMix = got[1]
        return cached
    classes = list(
        zip(
            mix.gpus.tolist(),
            mix.cpu.tolist(),
            mix.count.tolist(),
            mix.threshold.tolist(),
            mix.column.tolist(),
            strict=True,
        )
    )
    frac = sorted((c for c in classes if c[0] == 0), key=lambda c: c[1])
    suffix0 = [0] * (len(frac) + 1)
    for p in range(len(frac) - 1, -1, -1):
        suffix0[p] = suffix0[p + 1] + frac[p][2]
    thresholds: list[tuple[list[int], list[int]]] = []
    for p in range(len(frac) + 1):
        items = sorted((c[3], c[2]) for c in frac[:p])
        above = [0] * (len(items) + 1)
        for j in range(len(items) - 1, -1, -1):
            above[j] = above[j + 1] + items[j][1]
        thresholds.append(([t for t, _ in items], above))
    one = _OneMix(
        needs0=[c[1] for c in frac],
        count0=[c[2] for c in frac],
        col0=[c[4] for c in frac],
        suffix0=suffix0,
        thresholds=thresholds,
        whole=[c for c in classes if c[0] > 0],
    )
    cycle.notes["frag_one_mix"] = (mix, one)
    return one


def _cpu_strand_one(cycle: CycleState, req: Request, s: int, cpu: int, d: int) -> float:
    """:func:`_cpu_strand` for one node."""
    rho = cycle.mix.gpu_per_cpu
    if rho <= 0 or CPU_STRAND_WEIGHT == 0:
        return 0.0
    out = max(0.0, (s - d) - (cpu - req.cpu_milli) * rho) - max(0.0, s - cpu * rho)
    return out if CPU_STRAND_WEIGHT == 1.0 else CPU_STRAND_WEIGHT * out


_VARIANTS = np.array([[0], [1]], dtype=np.int64)
DEDUPE_ABOVE = 512


def _mix_rows(cycle: CycleState) -> tuple[I64, B, I64, I64]:
    """The mix's class vectors as (1, M) rows (gpus, gpus > 0, cpu, count); cached with the classes."""
    got = cycle.notes.get("frag_mix_rows")
    mix = cycle.mix
    if isinstance(got, tuple) and got[0] is mix:
        rows: tuple[I64, B, I64, I64] = got[1]
        return rows
    k = mix.gpus[None, :]
    rows = (k, k > 0, mix.cpu[None, :], mix.count[None, :])
    cycle.notes["frag_mix_rows"] = (mix, rows)
    return rows


def _cpu_strand(cycle: CycleState, req: Request, s: I64, cpu: I64, d: int) -> F64:
    """Change of the GPU share a node's CPU can no longer feed at the mix's CPU per GPU (FGD looks one pod
    ahead; this looks at the whole remaining node: a node with 4 idle GPUs and CPU for one more pod strands 3)."""
    rho = cycle.mix.gpu_per_cpu
    if rho <= 0 or CPU_STRAND_WEIGHT == 0:
        return np.zeros(len(s), dtype=np.float64)
    before = np.maximum(0.0, s - cpu * rho)
    after = np.maximum(0.0, (s - d) - (cpu - req.cpu_milli) * rho)
    out: F64 = after - before
    if CPU_STRAND_WEIGHT != 1.0:  # x * 1.0 == x: skip the multiply at the default weight
        out = CPU_STRAND_WEIGHT * out
    return out


CPU_STRAND_WEIGHT = 1.0


def _gpu_table(cycle: CycleState, d: int) -> I64:
    """(1001, M) change of h_m when a GPU with f free gets d more used; cached per cycle (the mix is fixed)."""
    key = f"frag_gtab:{d}"
    tab = cycle.notes.get(key)
    if isinstance(tab, np.ndarray):
        return tab
    grid = np.arange(MILLI + 1, dtype=np.int64)
    thr = cycle.mix.threshold[None, :]
    after = np.maximum(grid - d, 0)[:, None]
    out: I64 = np.where(after < thr, after, 0) - np.where(grid[:, None] < thr, grid[:, None], 0)
    cycle.notes[key] = out
    return out


class Fragmentation:
    """Score = minus the fragmentation increase in milli-GPU (absolute, so a node's score depends on that
    node only and can be cached per request shape until the node changes)."""

    name: ClassVar[str] = "Fragmentation"

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64 | None:
        if req.kind == KIND_MIG or len(cycle.mix) == 0 or len(opts) == 0:
            return None
        out: I64 = np.rint(-frag_delta(cycle, req, opts)).astype(np.int64)
        return out

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> list[int] | None:
        if req.kind == KIND_MIG or len(cycle.mix) == 0:
            return None
        return [round(-x) for x in frag_delta_one(cycle, req, i, cols)]
