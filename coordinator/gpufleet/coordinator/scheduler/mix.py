"""The recent mix of GPU requests, the "target workload" of fragmentation scoring (FGD, Weng et al. ATC'23).

Requests are bucketed into classes: a fraction rounds up to a multiple of :data:`STEP` milli (its threshold:
a GPU with less free than that cannot host it), whole-GPU requests are classed by GPU count. Each class keeps
a count and its CPU demand; :meth:`WorkloadMix.classes` gives numpy vectors (threshold, gpus, cpu, weight)
for the vectorized fragmentation score. The mix is kept incrementally by :class:`ClusterState` from bound
jobs, so it is part of the snapshot and scheduling stays a pure function of it. The class vectors are
re-read when a class appears or disappears or the mix size drifts by 10 %, so that per-node scores cached
by the scheduler stay valid across cycles in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STEP = 10
THRESHOLDS = np.arange(STEP, 1000 + STEP, STEP, dtype=np.int64)  # 50, 100, ..., 1000
MAX_CLASSES = 48
DRIFT = 10  # the class weights are re-read when the mix grew or shrank by more than 1/DRIFT (10 %)
CPU_STEP = 1000  # classes also split by CPU demand: a node short of CPU strands its GPUs for that class

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def threshold_column(milli_per_gpu: int) -> int:
    """Index in THRESHOLDS of the class of a request needing ``milli_per_gpu`` on one GPU."""
    return min(len(THRESHOLDS) - 1, max(0, -(-milli_per_gpu // STEP) - 1))


@dataclass(frozen=True, slots=True)
class MixClasses:
    column: I64  # index into THRESHOLDS (per-GPU need)
    threshold: I64  # milli a GPU must have free
    gpus: I64  # whole GPUs needed on one node (0 for a fraction)
    cpu: I64  # mean CPU millicores of the class
    weight: F64  # popularity, sums to 1 (empty mix: no classes)
    count: I64  # popularity as integers (weight = count / count_total): scores sum them exactly
    count_total: int = 1
    gpu_per_cpu: float = 0.0  # mean GPU milli requested per CPU millicore (GPU work only)

    def __len__(self) -> int:
        return len(self.weight)


class WorkloadMix:
    def __init__(self) -> None:
        self._count: dict[tuple[int, int, int], int] = {}
        self._cpu: dict[tuple[int, int, int], int] = {}
        self._cached: MixClasses | None = None
        self._cached_total = 0
        self.total = 0

    @staticmethod
    def key(milli_per_gpu: int, gpus: int, cpu_milli: int) -> tuple[int, int, int] | None:
        if gpus <= 0 or milli_per_gpu <= 0:
            return None
        cpu = cpu_milli // CPU_STEP
        if milli_per_gpu < 1000:
            return (threshold_column(milli_per_gpu), 0, cpu)
        return (len(THRESHOLDS) - 1, gpus, cpu)

    def add(self, milli_per_gpu: int, gpus: int, cpu_milli: int, sign: int = 1) -> None:
        k = self.key(milli_per_gpu, gpus, cpu_milli)
        if k is None:
            return
        n = self._count.get(k, 0) + sign
        if n <= 0:
            self._count.pop(k, None)
            self._cpu.pop(k, None)
            self._cached = None  # a class disappeared
        else:
            if k not in self._count:
                self._cached = None  # a new class
            self._count[k] = n
            self._cpu[k] = self._cpu.get(k, 0) + sign * cpu_milli
        self.total = max(0, self.total + sign)
        if abs(self.total - self._cached_total) > max(1, self._cached_total // DRIFT):
            self._cached = None  # the weights drifted

    def merged(self, other: WorkloadMix) -> WorkloadMix:
        out = WorkloadMix()
        for src in (self, other):
            for k, n in src._count.items():
                out._count[k] = out._count.get(k, 0) + n
                out._cpu[k] = out._cpu.get(k, 0) + src._cpu.get(k, 0)
            out.total += src.total
        return out

    def classes(self) -> MixClasses:
        if self._cached is None:
            self._cached_total = self.total
            top = sorted(self._count.items(), key=lambda kv: -kv[1])[:MAX_CLASSES]
            total = sum(n for _, n in top) or 1
            col = np.array([k[0] for k, _ in top], dtype=np.int64)
            milli = sum(int(THRESHOLDS[k[0]]) * max(1, k[1]) * n for k, n in self._count.items())
            cpu_total = sum(self._cpu.values())
            self._cached = MixClasses(
                column=col,
                threshold=THRESHOLDS[col] if len(col) else np.zeros(0, dtype=np.int64),
                gpus=np.array([k[1] for k, _ in top], dtype=np.int64),
                cpu=np.array([self._cpu.get(k, 0) // max(1, n) for k, n in top], dtype=np.int64),
                weight=np.array([n / total for _, n in top], dtype=np.float64),
                count=np.array([n for _, n in top], dtype=np.int64),
                count_total=total,
                gpu_per_cpu=milli / cpu_total if cpu_total > 0 else 0.0,
            )
        return self._cached
