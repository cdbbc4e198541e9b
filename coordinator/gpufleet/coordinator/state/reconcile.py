"""Reconcile what an agent reports with what the leader believes (``sync_from`` the agent's view).

* A job the agent reports RUNNING that the leader has SCHEDULED there (same attempt): SCHEDULED -> RUNNING.
* A job the agent reports exited: SUCCEEDED (exit 0) / FAILED with the agent's reason / requeued by restart
  policy; once recorded, its id goes into ``DesiredState.acknowledged_exits`` so the agent forgets it.
* On Register, a job the leader believes RUNNING there that the agent does not report: LOST, then requeued or
  FAILED by restart policy. (A SCHEDULED one is simply sent again.)
* A job the agent runs that the leader no longer wants there needs nothing: it is absent from DesiredState, so
  the agent stops it. That is also why nothing runs twice: a job is re-placed only after its node was declared
  NOT_READY, and a returning agent's stale copies are not in its desired set.
* Gangs: the job is RUNNING when one member runs; it fails (or is requeued) when any member fails, and
  SUCCEEDED when every member exited 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import GpuFleetError
from gpufleet.coordinator.state import job_rules
from gpufleet.coordinator.state.fleet import FleetView, copy_job
from gpufleet.coordinator.state.sessions import AgentSession, AgentSessions
from gpufleet.coordinator.state.stopping import StopTracker
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

EXITED_STATES = frozenset({apb.LOCAL_JOB_STATE_EXITED, apb.LOCAL_JOB_STATE_FAILED_TO_START})


class AgentReconciler:
    def __init__(
        self, view: FleetView, sessions: AgentSessions, clock: Clock, stops: StopTracker | None = None
    ) -> None:
        self.view = view
        self.stops = stops or StopTracker(clock, 0)
        self.sessions = sessions
        self.clock = clock
        self.gang_exits: dict[str, dict[str, apb.LocalJob]] = {}

    def _assigned(self, job: pb.Job | None, node: str, local: apb.LocalJob) -> bool:
        if job is None or job.state not in lc.ACTIVE:
            return False
        if local.attempt and local.attempt != job.attempt:
            return False
        return any(a.node == node for a in job.assignments)

    async def on_register(self, session: AgentSession, reported: Iterable[apb.LocalJob]) -> None:
        node = session.node
        reported = list(reported)
        present = {
            r.job_id
            for r in reported
            if r.state not in EXITED_STATES and self._assigned(self.view.jobs.get(r.job_id), node, r)
        }
        exited = {r.job_id for r in reported if r.state in EXITED_STATES}
        now = self.clock.now_ms()
        for job in self.view.jobs_on(node):
            if job.state == lc.RUNNING and job.id not in present and job.id not in exited:
                victim = copy_job(job)
                job_rules.requeue_or_fail(
                    victim,
                    lc.LOST,
                    now_ms=now,
                    reason=job_rules.NOT_REPORTED,
                    message=f"the agent on {node} registered without it",
                    failed=False,
                )
                if not await self.view.commit(jobs=[victim]):
                    log.info("job %s changed while reconciling %s; next report settles it", job.id, node)
        await self.on_jobs(session, reported, full=True)

    async def on_jobs(self, session: AgentSession, reported: Iterable[apb.LocalJob], *, full: bool) -> None:
        """``full``: ``reported`` is everything the agent knows (Register, AgentStatus), not single events."""
        reported = list(reported)
        self.stops.observe(session.node, reported, full=full)
        if full:  # an acknowledged exit the agent no longer lists has been forgotten there: stop sending it
            session.acked_exits &= {r.job_id for r in reported}
        changed = False
        for local in reported:
            try:
                changed |= await self._observe(session, local)
            except GpuFleetError as exc:
                log.warning("node %s: could not record job %s (%s): %s", session.node, local.job_id, local.state, exc)
        if changed:
            self.sessions.mark(session.node)

    async def _observe(self, session: AgentSession, local: apb.LocalJob) -> bool:
        """Apply one LocalJob report; returns True when the acknowledged exits changed."""
        node = session.node
        job = self.view.jobs.get(local.job_id)
        assigned = self._assigned(job, node, local)
        if local.state in EXITED_STATES:
            if not assigned:
                self.gang_exits.pop(local.job_id, None)  # a gang that was cancelled or requeued meanwhile
            elif job is not None and not await self._record_exit(job, node, local):
                return False
            if local.job_id not in session.acked_exits:
                session.acked_exits.add(local.job_id)
                return True
            return False
        if assigned and job is not None and local.state == apb.LOCAL_JOB_STATE_RUNNING and job.state == lc.SCHEDULED:
            now = self.clock.now_ms()

            def mutate(j: pb.Job) -> bool:
                return self._assigned(j, node, local) and job_rules.mark_running(j, node=node, now_ms=now)

            await self.view.update_job(job.id, mutate)
        return False

    async def _record_exit(self, job: pb.Job, node: str, local: apb.LocalJob) -> bool:
        """Record the exit; returns False while a gang still waits for other members (do not ack yet)."""
        members = {a.node for a in job.assignments}
        if len(members) > 1:
            exits = self.gang_exits.setdefault(job.id, {})
            exits[node] = local
            failed = [e for e in exits.values() if e.exit_code != 0 or e.reason not in job_rules.SUCCESS_REASONS]
            if not failed and set(exits) != members:
                return False
            local = failed[0] if failed else local
        now = self.clock.now_ms()

        def mutate(j: pb.Job) -> bool:
            if not self._assigned(j, node, local):
                return False
            job_rules.record_exit(j, local, node=node, now_ms=now)
            return True

        await self.view.update_job(job.id, mutate)
        self.gang_exits.pop(job.id, None)
        return True
