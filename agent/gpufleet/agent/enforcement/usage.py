"""JobUsage: what the agent observes of one job's GPU use (memory, utilisation, achieved time share)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobUsage:
    job_id: str
    used_mib: int  # GPU memory of the job's whole process tree, summed over its GPUs
    limit_mib: int  # summed limits over its GPUs (0: no limit enforced)
    util_pct: int  # SM utilisation of its processes (-1: not sampled)
    share_target_milli: int  # gpu_milli it was given (1000 for whole GPUs)
    share_achieved_milli: int  # time it was allowed to run / wall time since attach, in milli
    sliced: bool = False  # True while the time-slicer takes turns on its GPU
