"""Weighted time-slicing of the jobs on one shared GPU, by pausing and resuming their process groups.

At any moment at most one job on a sliced GPU runs; the others are stopped (SIGSTOP to the process group)
and resumed (SIGCONT) when their turn comes. A round lasts ``quantum_ms x jobs``; each job's turn is
proportional to its share (gpu_milli), corrected by its deficit (the time it was owed but did not get,
e.g. because the event loop woke late), so achieved shares converge on the targets.

A job alone on its GPU runs unthrottled unless it is strict; when every job on a GPU is strict and their
shares sum to less than 1000, the rest of each round is an idle turn, so no job exceeds its share.

Achieved share = time the job was allowed to run / wall time since it joined the slicer.
Every pause is undone: removing a job or closing the slicer sends SIGCONT.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

IDLE = ""  # the pseudo-job of an idle turn


@dataclass(slots=True)
class _Member:
    job_id: str
    pgid: int
    weight: int
    strict: bool
    joined: float
    allowed_s: float = 0.0  # total time allowed to run since joining
    epoch_allowed_s: float = 0.0  # allowed time since the last membership change (deficit accounting)
    running_since: float | None = None  # set while it is resumed


def _signal(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False when it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to send %s to process group %d", sig.name, pgid)
        return False
    return True


class GpuSlicer:
    """The slicer of one GPU. Not thread-safe: call it from one thread (the agent's event loop)."""

    def __init__(
        self,
        gpu_index: int,
        quantum_ms: int,
        min_turn_ms: int,
        clock: Callable[[], float] = time.monotonic,
        tick_ms: int = 0,
    ) -> None:
        self.gpu_index = gpu_index
        self.quantum_s = quantum_ms / 1000
        self.min_turn_s = min_turn_ms / 1000
        self.tick_s = tick_ms / 1000
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._current: str | None = None  # job id whose turn it is, IDLE, or None when not slicing
        self._turn_end = 0.0
        self._epoch_start = clock()
        self._idle_epoch_s = 0.0
        self._idle_since: float | None = None
        self.switches = 0

    # ------------------------------------------------------------------ membership

    def add(self, job_id: str, pgid: int, weight: int, strict: bool) -> None:
        now = self._clock()
        self._settle(now)
        self._members[job_id] = _Member(job_id, pgid, max(1, weight), strict, now, running_since=now)
        self._new_epoch(now)

    def remove(self, job_id: str) -> None:
        """Take a job out; it is always resumed (SIGCONT) on the way out."""
        now = self._clock()
        self._settle(now)
        m = self._members.pop(job_id, None)
        if m is not None:
            _signal(m.pgid, signal.SIGCONT)
        if self._current == job_id:
            self._current = None
            self._idle_since = None
        self._new_epoch(now)

    def close(self) -> None:
        """Resume every job and stop slicing."""
        for m in self._members.values():
            _signal(m.pgid, signal.SIGCONT)
            m.running_since = None
        self._members.clear()
        self._current = None

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    @property
    def active(self) -> bool:
        """True when jobs take turns (2+ jobs, or a strict job)."""
        return len(self._members) >= 2 or any(m.strict for m in self._members.values())

    @property
    def current(self) -> str | None:
        """The job whose turn it is ("" for an idle turn, None when not slicing)."""
        return self._current

    @property
    def deadline(self) -> float:
        """When the current turn ends (meaningful while active)."""
        return self._turn_end

    # ------------------------------------------------------------------ accounting

    def _settle(self, now: float) -> None:
        """Book the running time of whoever runs up to ``now``."""
        for m in self._members.values():
            if m.running_since is not None:
                d = max(0.0, now - m.running_since)
                m.allowed_s += d
                m.epoch_allowed_s += d
                m.running_since = now
        if self._idle_since is not None:
            self._idle_epoch_s += max(0.0, now - self._idle_since)
            self._idle_since = now

    def _new_epoch(self, now: float) -> None:
        self._epoch_start = now
        self._idle_epoch_s = 0.0
        for m in self._members.values():
            m.epoch_allowed_s = 0.0
        if not self.active:
            # alone and not strict: it runs unthrottled
            for m in self._members.values():
                if m.running_since is None:
                    _signal(m.pgid, signal.SIGCONT)
                    m.running_since = now
            self._current = None
            self._idle_since = None
        else:
            self._turn_end = now  # start a new turn at the next step

    def achieved(self, job_id: str) -> float | None:
        """Allowed-to-run time / wall time since the job joined (0..1), or None if unknown."""
        m = self._members.get(job_id)
        if m is None:
            return None
        now = self._clock()
        allowed = m.allowed_s + (now - m.running_since if m.running_since is not None else 0.0)
        wall = now - m.joined
        return 1.0 if wall <= 0 else min(1.0, allowed / wall)

    # ------------------------------------------------------------------ turns

    def _weights(self) -> dict[str, int]:
        w = {m.job_id: m.weight for m in self._members.values()}
        total = sum(w.values())
        if all(m.strict for m in self._members.values()) and total < 1000:
            w[IDLE] = 1000 - total
        return w

    def step(self, now: float | None = None) -> float:
        """End the current turn and start the next; returns when that one ends."""
        now = self._clock() if now is None else now
        if not self.active:
            return now + 3600.0
        self._settle(now)
        weights = self._weights()
        total_w = sum(weights.values())
        elapsed = max(1e-9, now - self._epoch_start)
        round_s = self.quantum_s * len(weights)

        def owed(job: str) -> float:
            got = self._idle_epoch_s if job == IDLE else self._members[job].epoch_allowed_s
            return weights[job] / total_w * elapsed - got

        # the one most behind its target goes next; ties go round-robin after the current one
        order = list(weights)
        if self._current in weights:
            k = order.index(self._current)
            order = order[k + 1 :] + order[: k + 1]
        nxt = max(order, key=owed)
        base = round_s * weights[nxt] / total_w
        turn = max(self.min_turn_s, min(2 * base, base + owed(nxt)))

        if nxt != self._current:
            self.switches += 1
            # resume the next one first: the GPU is never left idle between turns
            if nxt != IDLE:
                m = self._members[nxt]
                if not _signal(m.pgid, signal.SIGCONT):
                    self._members.pop(nxt)
                    self._new_epoch(now)
                    return now
                m.running_since = now
            for job_id, m in list(self._members.items()):
                if job_id != nxt and m.running_since is not None:
                    m.running_since = None
                    if not _signal(m.pgid, signal.SIGSTOP):
                        self._members.pop(job_id)
        self._current = nxt
        self._idle_since = now if nxt == IDLE else None
        end = now + turn
        if self.tick_s > 0:
            # end turns on a shared grid so the slicers of all GPUs switch in the same wake-up;
            # the rounding is paid back through the deficit at the next turn
            end = math.ceil(end / self.tick_s) * self.tick_s
        self._turn_end = end
        return self._turn_end
