"""``StopTracker``: a job taken off live nodes (preempted, drained) is not placed again until those nodes' agents
confirm that the old attempt has stopped, so one job never runs in two places at once (the old attempt gets a
SIGTERM grace period before SIGKILL).

A hold ends for a node when its agent reports the attempt exited or no longer reports it, when the node becomes
NOT_READY (its jobs count as gone), or after ``max_hold_s`` as a safety net. Holds live in the leader's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpufleet.common.clock import Clock
from gpufleet.proto.v1 import agent_pb2 as apb

EXITED = frozenset({apb.LOCAL_JOB_STATE_EXITED, apb.LOCAL_JOB_STATE_FAILED_TO_START})


@dataclass
class _Hold:
    attempt: int
    nodes: set[str]
    until_ms: int


class StopTracker:
    def __init__(self, clock: Clock, max_hold_s: float, on_release: Callable[[str], None] | None = None) -> None:
        self.clock = clock
        self.max_hold_ms = int(max_hold_s * 1000)
        self.on_release = on_release
        self._holds: dict[str, _Hold] = {}

    def hold(self, job_id: str, attempt: int, nodes: Iterable[str]) -> None:
        nodes = set(nodes)
        if nodes:
            now = self.clock.now_ms()
            self._holds[job_id] = _Hold(attempt, nodes, now + self.max_hold_ms)

    def held(self, job_id: str) -> bool:
        h = self._holds.get(job_id)
        if h is None:
            return False
        if self.clock.now_ms() >= h.until_ms:
            self._release(job_id)
            return False
        return True

    def observe(self, node: str, reported: Iterable[apb.LocalJob], *, full: bool) -> None:
        """An agent's report: a full list (Register, AgentStatus) or single exits (JobExited)."""
        running = set()
        for local in reported:
            h = self._holds.get(local.job_id)
            if h is None or node not in h.nodes or (local.attempt and local.attempt != h.attempt):
                continue
            if local.state in EXITED:
                self._drop(local.job_id, node)
            else:
                running.add(local.job_id)
        if full:
            for job_id in [j for j, h in self._holds.items() if node in h.nodes and j not in running]:
                self._drop(job_id, node)

    def node_gone(self, node: str) -> None:
        for job_id in [j for j, h in self._holds.items() if node in h.nodes]:
            self._drop(job_id, node)

    def clear(self) -> None:
        self._holds.clear()

    def _drop(self, job_id: str, node: str) -> None:
        h = self._holds.get(job_id)
        if h is None:
            return
        h.nodes.discard(node)
        if not h.nodes:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        if self._holds.pop(job_id, None) is not None and self.on_release is not None:
            self.on_release(job_id)
