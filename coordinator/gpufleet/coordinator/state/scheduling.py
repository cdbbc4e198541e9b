"""The leader's scheduling loop: keeps the scheduler's ClusterState in step with the fleet view, plans with
``Scheduler.schedule`` and commits each plan through the fenced view.

Cycles run on events (a job became PENDING, capacity was freed, a node changed) and on a periodic tick. A plan is
committed in order (preemptions, then placements, then changed unplaced reasons), a few dozen jobs per txn, each
job conditioned on the revision the plan saw; if a txn loses a race the rest of the plan is dropped and the loop
plans again from the refreshed view. An unplaced job's reason is written only when its words change or one of its
numbers (queue position, time to deadline, node counts) moves by more than a quarter (``job_rules.unplaced_changed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import GpuFleetError, NotLeaderError
from gpufleet.coordinator.config import SchedulingConfig
from gpufleet.coordinator.scheduler import ClusterState, Plan, Scheduler
from gpufleet.coordinator.state import job_rules
from gpufleet.coordinator.state.fleet import FleetView, copy_job
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.coordinator.state.stopping import StopTracker
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

SCHEDULER_BACKOFF_MAX_S = 10.0


def _bound(job: pb.Job | None) -> bool:
    return job is not None and job.state in lc.ACTIVE and len(job.assignments) > 0


class SchedulingLoop:
    """FleetListener + loop. ``on_placed`` hooks (benchmarks, metrics) hear of every committed placement."""

    def __init__(
        self,
        view: FleetView,
        scheduler: Scheduler,
        sessions: AgentSessions,
        config: SchedulingConfig,
        clock: Clock,
        stops: StopTracker | None = None,
    ) -> None:
        self.view = view
        self.stops = stops or StopTracker(clock, 0)
        self.scheduler = scheduler
        self.sessions = sessions
        self.config = config
        self.clock = clock
        self.state = ClusterState()
        self._wake = asyncio.Event()
        self.active = False
        self.cycles = 0
        self.failures = 0
        self.on_placed: list[Callable[[pb.Job], None]] = []
        self._relayouts_sent: dict[tuple[str, int], tuple[str, ...]] = {}
        # Jobs that became pending since the last cycle. When nothing else changed (no capacity freed, no node
        # change, no tick), a cycle only considers these: the others did not fit before and still do not.
        self._new_pending: set[str] = set()
        self._full = True
        # ids of the PENDING and of the active (SCHEDULED/RUNNING) jobs, kept from job events, so a cycle does
        # not walk every job in the view (finished ones stay there for the retention period)
        self._pending: set[str] = set()
        self._active: set[str] = set()

    # ------------------------------------------------------------------ FleetListener

    def job_changed(self, old: pb.Job | None, new: pb.Job) -> None:
        if not self.active:
            return
        was, now = _bound(old), _bound(new)
        if was and now and old is not None and list(old.assignments) == list(new.assignments):
            pass
        else:
            if was:
                self.state.unbind(new.id)
            if now:
                self.state.bind(new)
        self._track(new)
        if new.state == lc.PENDING and (old is None or old.state != lc.PENDING):
            self._new_pending.add(new.id)
            self._wake.set()
        elif was and not now:
            self.trigger()  # capacity freed

    def _track(self, job: pb.Job) -> None:
        if job.state == lc.PENDING:
            self._pending.add(job.id)
        else:
            self._pending.discard(job.id)
        if job.state in lc.ACTIVE:
            self._active.add(job.id)
        else:
            self._active.discard(job.id)

    def node_changed(self, old: pb.Node | None, new: pb.Node) -> None:
        if not self.active:
            return
        self.state.upsert_node(new)
        if old is not None and old.inventory.gpus != new.inventory.gpus:
            for key in [k for k in self._relayouts_sent if k[0] == new.inventory.name]:
                del self._relayouts_sent[key]
        if old is None or old.state != new.state or old.cordoned != new.cordoned or old.inventory != new.inventory:
            self.trigger()

    def trigger(self) -> None:
        """Ask for a full cycle (every pending job is considered again: capacity or nodes changed)."""
        self._full = True
        self._wake.set()

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self.state = ClusterState()
        for node in self.view.nodes.values():
            self.state.upsert_node(node)
        self._pending.clear()
        self._active.clear()
        for job in self.view.jobs.values():
            if _bound(job):
                self.state.bind(job)
            self._track(job)
        self._relayouts_sent.clear()
        self.active = True
        self.trigger()

    def stop(self) -> None:
        self.active = False

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races a wake-up
            try:
                async with asyncio.timeout(self.config.tick_s):
                    await self._wake.wait()
            except TimeoutError:
                self._full = True
            # coalesce a burst of submissions into one cycle
            await asyncio.sleep(self.config.min_interval_s)
            self._wake.clear()
            try:
                await self.cycle()
            except NotLeaderError:
                raise
            except GpuFleetError as exc:
                log.warning("scheduling cycle failed, retrying: %s", exc)
                await asyncio.sleep(0.2)
                self.trigger()

    async def cycle(self) -> Plan | None:
        wanted = self._pending if self._full else self._new_pending
        candidates = [j for j in map(self.view.jobs.get, wanted) if j is not None and j.state == lc.PENDING]
        self._full = False
        self._new_pending.clear()
        # a preempted or drained job waits until its old attempt has stopped (StopTracker); the scheduler orders
        # the queue itself (a total order ending in the job id), so the order of this list does not matter
        pending = [j for j in candidates if not self.stops.held(j.id)]
        if not pending:
            return None
        running = [j for j in map(self.view.jobs.get, self._active) if j is not None and j.state in lc.ACTIVE]
        now = self.clock.now_ms()
        try:
            plan = self.scheduler.schedule(self.state, pending, now, running)
        except Exception:  # a scheduler bug must not stop the rest of the control plane: log, back off, retry
            self.failures += 1
            delay = min(SCHEDULER_BACKOFF_MAX_S, 0.5 * self.failures)
            log.exception("the scheduler failed on %d pending jobs; retrying in %.1fs", len(pending), delay)
            await asyncio.sleep(delay)
            self.trigger()
            return None
        self.failures = 0
        self.cycles += 1
        batches: list[list[pb.Job]] = [[], [], []]
        held: list[tuple[str, int, set[str]]] = []
        for pre in plan.preemptions:
            victim = self.view.jobs.get(pre.job_id)
            if victim is None or victim.state not in lc.ACTIVE:
                continue
            held.append((victim.id, victim.attempt, self._live_nodes(victim)))
            v = copy_job(victim)
            msg = f"{pre.reason} (for {pre.for_job_id})" if pre.for_job_id else pre.reason
            job_rules.requeue_or_fail(v, lc.PREEMPTED, now_ms=now, reason="PREEMPTED", message=msg, failed=False)
            batches[0].append(v)
        for pl in plan.placements:
            cur = self.view.jobs.get(pl.job_id)
            if cur is None or cur.state != lc.PENDING:
                continue
            j = copy_job(cur)
            job_rules.place(j, pl.assignments, now_ms=now)
            batches[1].append(j)
        for job_id, why in plan.unplaced.items():
            cur = self.view.jobs.get(job_id)
            if cur is None or cur.state != lc.PENDING:
                continue
            if plan.codes.get(job_id) == "DEADLINE":  # time only moves on: it can never run now
                j = copy_job(cur)
                lc.transition(j, lc.FAILED, at_ms=now, reason="DEADLINE_EXCEEDED", message=why)
                batches[2].append(j)
            elif job_rules.unplaced_changed(cur, why):
                j = copy_job(cur)
                job_rules.set_unplaced(j, why)
                batches[2].append(j)
        chunk = self.config.txn_chunk
        for batch in batches:
            for i in range(0, len(batch), chunk):
                part = batch[i : i + chunk]
                if not await self.view.commit(jobs=part):
                    log.info("plan lost a race on %d jobs; planning again", len(part))
                    self.trigger()
                    return plan
                if batch is batches[0]:
                    ids = {j.id for j in part}
                    for job_id, attempt, nodes in held:
                        if job_id in ids:
                            self.stops.hold(job_id, attempt, nodes)
                if batch is batches[1]:
                    for j in part:
                        for hook in self.on_placed:
                            hook(j)
        self._send_relayouts(plan)
        return plan

    def release(self, job_id: str) -> None:
        """A held job may be placed again (StopTracker callback)."""
        self._new_pending.add(job_id)
        self._wake.set()

    def _live_nodes(self, job: pb.Job) -> set[str]:
        out = set()
        for a in job.assignments:
            node = self.view.nodes.get(a.node)
            if node is not None and node.state != pb.NODE_STATE_NOT_READY:
                out.add(a.node)
        return out

    def _send_relayouts(self, plan: Plan) -> None:
        for r in plan.mig_relayouts:
            key = (r.node, r.gpu_index)
            profiles = tuple(r.profiles)
            if self._relayouts_sent.get(key) == profiles or not self.sessions.connected(r.node):
                continue
            cmd = apb.Command(apply_mig_layout=apb.ApplyMigLayout(gpu_index=r.gpu_index, profiles=r.profiles))
            self.sessions.send_command(r.node, cmd)
            self._relayouts_sent[key] = profiles
            log.info("asked %s to lay out GPU %d as %s for %s", r.node, r.gpu_index, profiles, r.for_job_id)
