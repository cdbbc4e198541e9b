"""The GPU memory watchdog: per-job GPU memory (whole process tree) against the job's limit per GPU.

Fed with the backend's samples (per-process used memory); a job above its limit on a GPU for longer than
the grace period is reported once as a :class:`Violation`. Works the same with or without MPS (under MPS
the driver already refuses allocations past the pinned limit; the watchdog also catches processes that
bypass MPS).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gpufleet.agent.backends.base import GpuSample
from gpufleet.agent.enforcement.proctree import JobProcessIndex

MIB = 1024 * 1024
REASON = "GPU_MEMORY_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class Violation:
    job_id: str
    gpu_index: int
    used_mib: int
    limit_mib: int

    @property
    def message(self) -> str:
        return (
            f"job used {self.used_mib * MIB} bytes ({self.used_mib} MiB) of GPU memory on GPU {self.gpu_index}; "
            f"allowed {self.limit_mib * MIB} bytes ({self.limit_mib} MiB)"
        )


class MemoryWatchdog:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._limits: dict[tuple[str, int], int] = {}  # (job, gpu index) -> MiB
        self._over_since: dict[tuple[str, int], float] = {}
        self._reported: set[str] = set()
        self.usage: dict[str, dict[int, int]] = {}  # job -> gpu index -> MiB (latest sample)
        self.util: dict[str, int] = {}  # job -> SM util % (latest sample; -1 unknown)

    def set_limit(self, job_id: str, gpu_index: int, limit_mib: int) -> None:
        self._limits[(job_id, gpu_index)] = limit_mib

    def limits(self, job_id: str) -> dict[int, int]:
        return {g: v for (j, g), v in self._limits.items() if j == job_id}

    def rearm(self, job_id: str) -> None:
        """Report the job again at the next sample it is still over (its stop failed)."""
        self._reported.discard(job_id)

    def clear(self, job_id: str) -> None:
        for key in [k for k in self._limits if k[0] == job_id]:
            del self._limits[key]
            self._over_since.pop(key, None)
        self._reported.discard(job_id)
        self.usage.pop(job_id, None)
        self.util.pop(job_id, None)

    def observe(self, samples: Sequence[GpuSample], index: JobProcessIndex, now: float) -> list[Violation]:
        usage: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        util: dict[str, int] = {}
        live: set[int] = set()
        for s in samples:
            for p in s.processes:
                live.add(p.pid)
                job = index.job_for_pid(p.pid)
                if job is None:
                    continue
                usage[job][s.index] += p.used_memory_mib
                if p.sm_util_pct >= 0:
                    util[job] = min(100, util.get(job, 0) + p.sm_util_pct)
        index.forget_except(live)
        self.usage = {j: dict(g) for j, g in usage.items()}
        self.util = util
        out = []
        for key, limit in self._limits.items():
            job, gpu = key
            used = self.usage.get(job, {}).get(gpu, 0)
            if limit <= 0 or used <= limit:
                self._over_since.pop(key, None)
                continue
            since = self._over_since.setdefault(key, now)
            if now - since >= self.grace_s and job not in self._reported:
                self._reported.add(job)
                out.append(Violation(job, gpu, used, limit))
        return out
