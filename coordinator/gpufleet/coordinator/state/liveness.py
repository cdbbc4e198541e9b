"""Node liveness and drain progress, checked by the leader every ``liveness.check_interval_s``.

* A READY/DRAINING/DRAINED node whose agent has been disconnected (or silent) for longer than ``liveness.node_timeout_s``
  becomes NOT_READY, and each of its jobs goes LOST and then PENDING or FAILED by its restart policy, in the same
  txn. Only after that may the scheduler place those jobs elsewhere, so a job never runs in two places while the
  leader still counts the old one; a returning agent stops its stale copies (they are absent from its desired
  state).
* A DRAINING node past its deadline has its remaining jobs preempted (requeued); an empty DRAINING node becomes
  DRAINED.

Last-seen times are memory-only (``AgentSessions.last_seen_ms``). A new leader gives every node that has not
reconnected yet ``liveness.failover_grace_s`` (at least the node timeout) from its own start, so agents that
were stuck on a paused old leader are not declared gone while they are still finding the new one.
"""

from __future__ import annotations

import asyncio
import logging

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import GpuFleetError, NotLeaderError
from gpufleet.coordinator.config import LivenessConfig
from gpufleet.coordinator.state import job_rules
from gpufleet.coordinator.state.fleet import FleetView, copy_job, copy_node
from gpufleet.coordinator.state.nodes import AGENT_GONE, DRAINED, DRAINING, NOT_READY, READY
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.coordinator.state.stopping import StopTracker

log = logging.getLogger(__name__)

MAX_JOBS_PER_TXN = 100


class LivenessChecker:
    def __init__(
        self,
        view: FleetView,
        sessions: AgentSessions,
        config: LivenessConfig,
        clock: Clock,
        stops: StopTracker | None = None,
    ) -> None:
        self.view = view
        self.stops = stops or StopTracker(clock, 0)
        self.sessions = sessions
        self.config = config
        self.clock = clock
        self.started_ms = 0

    def start(self) -> None:
        self.started_ms = self.clock.now_ms()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval_s)
            try:
                await self.check()
            except NotLeaderError:
                raise
            except GpuFleetError as exc:
                log.warning("liveness check failed, retrying: %s", exc)

    async def check(self) -> None:
        now = self.clock.now_ms()
        timeout_ms = int(self.config.node_timeout_s * 1000)
        grace_ms = max(timeout_ms, int(self.config.failover_grace_s * 1000))
        for name, node in list(self.view.nodes.items()):
            if node.state != NOT_READY:
                # a connected agent that went silent (paused, wedged, network gone) counts as gone too
                seen = self.sessions.last_seen_ms.get(name)
                last, limit = (seen, timeout_ms) if seen is not None else (self.started_ms, grace_ms)
                if now - last > limit:
                    self.sessions.drop(name)
                    await self._not_ready(name, now, (now - last) / 1000)
                    continue
            elif self.view.on_node.get(name):  # NOT_READY with jobs left (more than one txn's worth)
                await self._not_ready(name, now, (now - self.sessions.last_seen_ms.get(name, 0)) / 1000)
                continue
            if node.state == DRAINING:
                await self._drain_step(name, now)

    async def _not_ready(self, name: str, now: int, gone_s: float) -> None:
        node = copy_node(self.view.node(name))
        if node.state != NOT_READY:
            node.state = NOT_READY
            node.reason = f"{AGENT_GONE}: no agent for {gone_s:.1f}s"
        victims = []
        for job in self.view.jobs_on(name)[:MAX_JOBS_PER_TXN]:
            v = copy_job(job)
            job_rules.requeue_or_fail(
                v, lc.LOST, now_ms=now, reason=job_rules.NODE_LOST, message=f"node {name} is not ready", failed=False
            )
            victims.append(v)
        if await self.view.commit(jobs=victims, nodes=[node]):
            self.stops.node_gone(name)
            log.warning("node %s is NOT_READY (agent gone %.1fs); %d jobs lost", name, gone_s, len(victims))

    async def _drain_step(self, name: str, now: int) -> None:
        node = self.view.node(name)
        jobs = self.view.jobs_on(name)
        if not jobs:
            n = copy_node(node)
            n.state = DRAINED
            n.reason = "drained: no jobs left"
            await self.view.commit(nodes=[n])
            return
        if node.drain_deadline_ms and now >= node.drain_deadline_ms:
            victims = []
            held = []
            for job in jobs[:MAX_JOBS_PER_TXN]:
                held.append((job.id, job.attempt, {a.node for a in job.assignments}))
                v = copy_job(job)
                job_rules.requeue_or_fail(
                    v,
                    lc.PREEMPTED,
                    now_ms=now,
                    reason=job_rules.DRAINED,
                    message=f"node {name} drain deadline passed",
                    failed=False,
                )
                victims.append(v)
            if await self.view.commit(jobs=victims):
                for job_id, attempt, nodes in held:
                    self.stops.hold(job_id, attempt, nodes)


__all__ = ["READY", "LivenessChecker"]
