"""The job lifecycle as an explicit transition table, with history.

PENDING -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, plus PREEMPTED and LOST, which go back to
PENDING when the restart policy allows. An illegal edge raises IllegalTransitionError; it is never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.common.errors import IllegalTransitionError
from gpufleet.proto.v1 import types_pb2 as pb

S = pb.JobState
PENDING = S.JOB_STATE_PENDING
SCHEDULED = S.JOB_STATE_SCHEDULED
RUNNING = S.JOB_STATE_RUNNING
SUCCEEDED = S.JOB_STATE_SUCCEEDED
FAILED = S.JOB_STATE_FAILED
CANCELLED = S.JOB_STATE_CANCELLED
PREEMPTED = S.JOB_STATE_PREEMPTED
LOST = S.JOB_STATE_LOST

TRANSITIONS: Mapping[int, frozenset[int]] = {
    # waiting for a placement; may be cancelled, or failed when it can never run (deadline, invalid)
    PENDING: frozenset({SCHEDULED, CANCELLED, FAILED}),
    # placed on nodes, the agents have not reported it running yet
    SCHEDULED: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED, PREEMPTED, LOST, PENDING}),
    # running on its nodes
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, PREEMPTED, LOST, PENDING}),
    # taken off its nodes for higher-priority work or a drain; requeued by the restart policy
    PREEMPTED: frozenset({PENDING, CANCELLED, FAILED}),
    # its node vanished; requeued or failed by the restart policy
    LOST: frozenset({PENDING, CANCELLED, FAILED, RUNNING}),
    # terminal states
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

TERMINAL: frozenset[int] = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE: frozenset[int] = frozenset({SCHEDULED, RUNNING})


def state_name(state: int) -> str:
    return S.Name(state).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def parse_state(name: str) -> int:
    key = "JOB_STATE_" + name.strip().upper()
    try:
        return int(S.Value(key))
    except ValueError:
        valid = ", ".join(state_name(s) for s in TRANSITIONS)
        raise ValueError(f"unknown job state {name!r}; valid: {valid}") from None


def transition(job: pb.Job, to: int, *, at_ms: int, reason: str, message: str = "") -> None:
    """Move ``job`` to ``to`` in place, recording the edge in its history. Raises on an illegal edge."""
    src = job.state
    if to not in TRANSITIONS.get(src, frozenset()):
        raise IllegalTransitionError(f"job {job.id}: {state_name(src)} -> {state_name(to)} is not allowed ({reason})")
    job.history.append(pb.Transition(from_state=src, to_state=to, at_ms=at_ms, reason=reason, message=message))  # type: ignore[arg-type]
    job.state = to  # type: ignore[assignment]
    job.reason = reason
    job.message = message
    job.updated_ms = at_ms
    if to == RUNNING and not job.started_ms:
        job.started_ms = at_ms
    if to in TERMINAL:
        job.finished_ms = at_ms


def failure_restarts(job: pb.Job) -> int:
    """How many times the job went back to PENDING after its own failure (straight from RUNNING/SCHEDULED);
    requeues after a preemption, drain or lost node (via PREEMPTED or LOST) do not count."""
    return sum(1 for t in job.history if t.to_state == PENDING and t.from_state in (RUNNING, SCHEDULED))


def restart_allowed(job: pb.Job, *, failed: bool) -> bool:
    """Whether a job that stopped running goes back to PENDING.

    - ``restart_policy: never``: the job runs at most once; whatever ended it, it ends.
    - ``failed=False`` (gpufleet took it away: preemption, drain, its node was lost): requeued.
    - ``failed=True`` (its own failure: non-zero exit, limit exceeded, failed to start; or, under ``always``,
      a clean exit): requeued while it has restarted fewer than ``max_restarts`` times after failures.
    """
    if job.spec.restart_policy == pb.RESTART_POLICY_NEVER:
        return False
    if not failed:
        return True
    return failure_restarts(job) < job.spec.max_restarts
