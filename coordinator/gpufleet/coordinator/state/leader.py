"""``LeaderRuntime``: the coordinator's own leader-only subsystem (a ``LeaderOnly``).

On winning it loads the fleet view from the store, then runs the scheduling loop, the liveness checker, the
desired-state pusher and the budget refresher; agents connect to it. On losing (or when a fenced write fails) it
stops them, closes every agent session (agents reconnect and are redirected) and forgets the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gpufleet.common import lifecycle as lc
from gpufleet.common.errors import NotLeaderError, StoreError, UnavailableError
from gpufleet.common.retry import RetryPolicy, retry_async
from gpufleet.coordinator.state.costs import CostAccountant
from gpufleet.coordinator.state.fleet import FleetView
from gpufleet.coordinator.state.liveness import LivenessChecker
from gpufleet.coordinator.state.retention import JobRetention
from gpufleet.coordinator.state.scheduling import SchedulingLoop
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

LOAD_RETRY = RetryPolicy(initial_s=0.1, max_interval_s=1.0)


class LeaderRuntime:
    def __init__(
        self,
        view: FleetView,
        sessions: AgentSessions,
        scheduling: SchedulingLoop,
        liveness: LivenessChecker,
        costs: CostAccountant,
        budget_refresh_s: float,
        resign: Callable[[], Coroutine[Any, Any, None]] | None = None,
        retention: JobRetention | None = None,
    ) -> None:
        self.resign = resign
        self.view = view
        self.sessions = sessions
        self.scheduling = scheduling
        self.liveness = liveness
        self.costs = costs
        self.budget_refresh_s = budget_refresh_s
        self.retention = retention
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self.terms = 0

    async def set_enabled(self, enabled: bool) -> None:
        if enabled:
            if self._task is None or self._task.done():
                self.terms += 1
                self._task = asyncio.create_task(self._lead(), name="leader-runtime")
            return
        self.ready.clear()
        self.scheduling.stop()
        self.scheduling.stops.clear()
        self.sessions.close_all()
        task, self._task = self._task, None
        if task is not None and not task.done():
            # not awaited: this may run inside one of the loops (a fenced write that found another leader)
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self.view.clear()
        log.info("leader-only loops stopped")

    async def close(self) -> None:
        """Stop everything and wait until the loops have ended (process shutdown)."""
        await self.set_enabled(False)
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self.ready.wait()
        except TimeoutError:
            raise UnavailableError("this replica is becoming the leader; retry in a moment") from None

    async def _lead(self) -> None:
        await retry_async(LOAD_RETRY, self.view.load, retry_on=(StoreError,))
        self._hold_recently_preempted()
        self.scheduling.start()
        self.liveness.start()
        self.ready.set()
        log.info("leading: %d jobs, %d nodes", len(self.view.jobs), len(self.view.nodes))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.scheduling.run(), name="scheduler")
                tg.create_task(self.liveness.run(), name="liveness")
                tg.create_task(self.sessions.run_pusher(), name="desired-state")
                tg.create_task(self._budgets(), name="budgets")
                if self.retention is not None:
                    tg.create_task(self.retention.run(), name="job-retention")
        except* NotLeaderError:
            log.warning("lost leadership during a write; leader-only loops stop")
        except* Exception as group:  # a bug in a loop: do not stay a leader that does nothing
            log.error("a leader-only loop failed; resigning so another replica leads", exc_info=group)
            if self.resign is not None:
                task: asyncio.Task[None] = asyncio.create_task(self.resign(), name="resign")
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def _hold_recently_preempted(self) -> None:
        """The previous leader's stop holds were in its memory: a job it preempted moments ago may still be in its
        SIGTERM grace somewhere, so hold it until every live node's agent has reported without it."""
        stops = self.scheduling.stops
        now = self.scheduling.clock.now_ms()
        live = {n for n, node in self.view.nodes.items() if node.state != pb.NODE_STATE_NOT_READY}
        for job in self.view.jobs_in(lc.PENDING):
            recent = job.history[-2:]
            if any(t.to_state == lc.PREEMPTED for t in recent) and now - job.updated_ms < stops.max_hold_ms:
                stops.hold(job.id, job.attempt, live)

    async def _budgets(self) -> None:
        while True:
            await self.costs.refresh()
            await asyncio.sleep(self.budget_refresh_s)
