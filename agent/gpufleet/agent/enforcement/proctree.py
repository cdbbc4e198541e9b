"""Which job a GPU process belongs to: its process group, or an ancestor that is a job's group leader.

Only the pids the backend reports on a GPU are looked up (not the whole process table), and answers are
cached until that pid disappears from the samples, so this stays cheap at every sample.
"""

from __future__ import annotations

import os

import psutil


class JobProcessIndex:
    def __init__(self) -> None:
        self._by_pgid: dict[int, str] = {}
        self._cache: dict[int, str | None] = {}

    def add(self, job_id: str, pgid: int) -> None:
        self._by_pgid[pgid] = job_id
        self._cache.clear()

    def remove(self, job_id: str) -> None:
        self._by_pgid = {g: j for g, j in self._by_pgid.items() if j != job_id}
        self._cache.clear()

    def job_for_pid(self, pid: int) -> str | None:
        if pid in self._cache:
            return self._cache[pid]
        job = self._lookup(pid)
        self._cache[pid] = job
        return job

    def forget_except(self, live_pids: set[int]) -> None:
        for pid in [p for p in self._cache if p not in live_pids]:
            del self._cache[pid]

    def _lookup(self, pid: int) -> str | None:
        try:
            job = self._by_pgid.get(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            return None
        if job is not None:
            return job
        # a child that moved to its own process group (setsid, torchrun workers): walk up its ancestors
        try:
            for parent in psutil.Process(pid).parents():
                job = self._by_pgid.get(parent.pid)
                if job is not None:
                    return job
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return None
