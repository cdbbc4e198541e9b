"""Pure job-record edits: each function moves a ``pb.Job`` along the lifecycle table in place (no I/O).

They wrap :func:`gpufleet.common.lifecycle.transition`, so an illegal edge raises IllegalTransitionError and every
edge lands in the job's history with a time and a reason code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpufleet.common import lifecycle as lc
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

#: reason codes written into job history
SUBMITTED = "SUBMITTED"
PLACED = "PLACED"
STARTED = "STARTED"
EXITED = "EXITED"
NODE_LOST = "NODE_LOST"
NOT_REPORTED = "NOT_REPORTED_BY_AGENT"
REQUEUED = "REQUEUED"
RESTART_LIMIT = "RESTART_LIMIT_REACHED"
UNSCHEDULABLE = "UNSCHEDULABLE"
CANCELLED = "CANCELLED"
DRAINED = "NODE_DRAINED"

#: LocalJob reasons that, with exit code 0, mean the program finished by itself
SUCCESS_REASONS = frozenset({"", "SUCCEEDED", "EXITED"})


def new_job(job_id: str, spec: pb.JobSpec, *, request_id: str, priority_value: int, now_ms: int) -> pb.Job:
    job = pb.Job(id=job_id, request_id=request_id, priority_value=priority_value, created_ms=now_ms)
    job.spec.CopyFrom(spec)
    job.state = lc.PENDING
    job.reason = SUBMITTED
    job.updated_ms = now_ms
    job.history.append(
        pb.Transition(from_state=pb.JOB_STATE_UNSPECIFIED, to_state=lc.PENDING, at_ms=now_ms, reason=SUBMITTED)
    )
    return job


def place(job: pb.Job, assignments: Sequence[pb.TaskAssignment], *, now_ms: int) -> None:
    nodes = ", ".join(a.node for a in assignments)
    lc.transition(job, lc.SCHEDULED, at_ms=now_ms, reason=PLACED, message=f"placed on {nodes}")
    del job.assignments[:]
    job.assignments.extend(assignments)
    job.attempt += 1
    job.exit_code = 0


def unplaced_changed(job: pb.Job, why: str) -> bool:
    """Whether recording ``why`` as the job's pending reason is worth a write: its words changed, or one of its
    numbers (jobs ahead in the queue, seconds to the deadline, nodes short of something) moved by more than a
    quarter, or at all while below :data:`EXACT_BELOW`. Otherwise every placement would rewrite every job queued
    behind it."""
    if job.reason != UNSCHEDULABLE:
        return True
    old = job.message
    if old == why:
        return False
    if _NUMBER.sub("#", old) != _NUMBER.sub("#", why):
        return True
    return any(_moved(int(a), int(b)) for a, b in zip(_NUMBER.findall(old), _NUMBER.findall(why), strict=True))


_NUMBER = re.compile(r"\d+")
EXACT_BELOW = 9


def _moved(old: int, new: int) -> bool:
    return abs(new - old) > (old // 4 if old >= EXACT_BELOW else 0)


def set_unplaced(job: pb.Job, why: str) -> bool:
    """Record why a pending job is still pending; returns False when :func:`unplaced_changed` says the stored
    reason is still good enough."""
    if not unplaced_changed(job, why):
        return False
    job.reason = UNSCHEDULABLE
    job.message = why
    return True


def mark_running(job: pb.Job, *, node: str, now_ms: int) -> bool:
    if job.state != lc.SCHEDULED:
        return False
    lc.transition(job, lc.RUNNING, at_ms=now_ms, reason=STARTED, message=f"running on {node}")
    return True


def requeue_or_fail(job: pb.Job, via: int, *, now_ms: int, reason: str, message: str, failed: bool) -> None:
    """Take an active job off its nodes: through ``via`` (LOST / PREEMPTED, or PENDING directly) back to PENDING
    when its restart policy allows, else to FAILED."""
    if via != lc.PENDING and job.state != via:
        lc.transition(job, via, at_ms=now_ms, reason=reason, message=message)
    if lc.restart_allowed(job, failed=failed):
        lc.transition(job, lc.PENDING, at_ms=now_ms, reason=REQUEUED, message=f"{reason}: {message}".strip(": "))
    else:
        why = f"{reason}: {message}".strip(": ")
        lc.transition(job, lc.FAILED, at_ms=now_ms, reason=reason, message=f"{why} (restart policy: no retry)")
    del job.assignments[:]


def record_exit(job: pb.Job, local: apb.LocalJob, *, node: str, now_ms: int) -> None:
    """The job's process exited on ``node``: SUCCEEDED on code 0, else FAILED or requeued by restart policy."""
    job.exit_code = local.exit_code
    ok = local.state == apb.LOCAL_JOB_STATE_EXITED and local.exit_code == 0 and local.reason in SUCCESS_REASONS
    if ok:
        if job.spec.restart_policy == pb.RESTART_POLICY_ALWAYS and lc.restart_allowed(job, failed=True):
            msg = f"exit code 0 on {node}; restarted (restart policy always)"
            lc.transition(job, lc.PENDING, at_ms=now_ms, reason=EXITED, message=msg)
            del job.assignments[:]
            return
        lc.transition(job, lc.SUCCEEDED, at_ms=now_ms, reason=EXITED, message=f"exit code 0 on {node}")
        return
    reason = local.reason or ("FAILED_TO_START" if local.state == apb.LOCAL_JOB_STATE_FAILED_TO_START else EXITED)
    message = local.message or f"exit code {local.exit_code} on {node}"
    if lc.restart_allowed(job, failed=True):
        lc.transition(job, lc.PENDING, at_ms=now_ms, reason=reason, message=message)
        del job.assignments[:]
    else:
        lc.transition(job, lc.FAILED, at_ms=now_ms, reason=reason, message=message)


def cancel(job: pb.Job, *, now_ms: int, reason: str) -> None:
    lc.transition(job, lc.CANCELLED, at_ms=now_ms, reason=CANCELLED, message=reason or "cancelled by user")
