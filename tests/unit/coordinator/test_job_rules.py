"""Job record edits follow the lifecycle table and leave a history a user can read."""

from __future__ import annotations

import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.common.errors import IllegalTransitionError
from gpufleet.coordinator.state import job_rules
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb


def _job(**spec_kw: object) -> pb.Job:
    spec = pb.JobSpec(name="j", team="ml", command=["true"], **spec_kw)  # type: ignore[arg-type]
    spec.resources.gpu_milli = 1000
    return job_rules.new_job("j-1", spec, request_id="r1", priority_value=100, now_ms=1)


def _placed(job: pb.Job) -> pb.Job:
    job_rules.place(job, [pb.TaskAssignment(node="n1")], now_ms=2)
    return job


def test_new_job_is_pending_with_a_history_entry() -> None:
    job = _job()
    assert job.state == lc.PENDING
    assert [(t.from_state, t.to_state, t.reason) for t in job.history] == [(0, lc.PENDING, "SUBMITTED")]


def test_place_then_run_then_succeed() -> None:
    job = _placed(_job())
    assert job.state == lc.SCHEDULED and job.attempt == 1 and job.assignments[0].node == "n1"
    assert job_rules.mark_running(job, node="n1", now_ms=3)
    assert not job_rules.mark_running(job, node="n1", now_ms=4)  # already running: no second edge
    job_rules.record_exit(job, apb.LocalJob(job_id=job.id, state=apb.LOCAL_JOB_STATE_EXITED), node="n1", now_ms=5)
    assert job.state == lc.SUCCEEDED and job.started_ms == 3 and job.finished_ms == 5


def test_failure_reason_from_agent_is_kept_when_not_restarted() -> None:
    job = _placed(_job(restart_policy=pb.RESTART_POLICY_NEVER))
    local = apb.LocalJob(
        job_id=job.id,
        state=apb.LOCAL_JOB_STATE_EXITED,
        exit_code=137,
        reason="GPU_MEMORY_LIMIT_EXCEEDED",
        message="used 9000 MiB of 8000 MiB",
    )
    job_rules.record_exit(job, local, node="n1", now_ms=5)
    assert job.state == lc.FAILED and job.reason == "GPU_MEMORY_LIMIT_EXCEEDED" and job.exit_code == 137
    assert "9000" in job.message


def test_lost_job_is_requeued_through_lost_and_loses_its_placement() -> None:
    job = _placed(_job())
    job_rules.mark_running(job, node="n1", now_ms=3)
    job_rules.requeue_or_fail(job, lc.LOST, now_ms=4, reason="NODE_LOST", message="node n1 gone", failed=False)
    assert job.state == lc.PENDING and not job.assignments
    assert [t.to_state for t in job.history][-2:] == [lc.LOST, lc.PENDING]


def test_lost_job_fails_when_its_restart_limit_is_reached() -> None:
    job = _placed(_job(restart_policy=pb.RESTART_POLICY_NEVER))
    job_rules.requeue_or_fail(job, lc.LOST, now_ms=4, reason="NODE_LOST", message="", failed=True)
    assert job.state == lc.FAILED and job.reason == "NODE_LOST"


def test_unplaced_reason_is_written_only_when_it_changes() -> None:
    job = _job()
    assert job_rules.set_unplaced(job, "needs 2x H100-80GB")
    assert not job_rules.set_unplaced(job, "needs 2x H100-80GB")
    assert job_rules.set_unplaced(job, "quota")


def test_a_pending_reason_is_rewritten_when_its_words_change_or_a_number_moves_by_a_quarter() -> None:
    job = _job()

    def why(short: int, ahead: int, team: int) -> str:
        return (
            f"needs 2x H100-80GB on one node; {short} nodes have fewer than 2 idle GPUs; "
            f"{ahead} jobs ahead in the queue ({team} of team ml)"
        )

    assert job_rules.set_unplaced(job, why(120, 400, 40))
    # the queue and the fleet moved a little: the stored reason stays (no write for every job behind each
    # placement, nor for every node that changed)
    assert not job_rules.set_unplaced(job, why(118, 350, 35))
    assert not job_rules.set_unplaced(job, why(95, 301, 30))
    # a number moved by more than a quarter: rewritten
    assert job_rules.set_unplaced(job, why(120, 299, 30))
    assert "299 jobs ahead" in job.message
    # other words: rewritten whatever the numbers
    assert job_rules.set_unplaced(
        job, "team ml would exceed its GPU limit; 299 jobs ahead in the queue (30 of team ml)"
    )
    # small numbers are exact: near the head of the queue every step is written
    assert job_rules.set_unplaced(job, why(120, 3, 1))
    assert job_rules.set_unplaced(job, why(120, 2, 1))
    assert job_rules.set_unplaced(job, "needs 2x H100-80GB on one node; 120 nodes have fewer than 2 idle GPUs")
    # the time to a deadline counts down like the position
    assert job_rules.set_unplaced(job, "needs 1x H100-80GB on one node; deadline in 600s")
    assert not job_rules.set_unplaced(job, "needs 1x H100-80GB on one node; deadline in 500s")
    assert job_rules.set_unplaced(job, "needs 1x H100-80GB on one node; deadline in 440s")


def test_cancel_of_finished_job_is_illegal() -> None:
    job = _placed(_job())
    job_rules.record_exit(job, apb.LocalJob(job_id=job.id, state=apb.LOCAL_JOB_STATE_EXITED), node="n1", now_ms=5)
    with pytest.raises(IllegalTransitionError):
        job_rules.cancel(job, now_ms=6, reason="x")


def _fail(job: pb.Job, now_ms: int) -> None:
    job_rules.mark_running(job, node="n1", now_ms=now_ms)
    local = apb.LocalJob(job_id=job.id, state=apb.LOCAL_JOB_STATE_EXITED, exit_code=1, reason="EXITED")
    job_rules.record_exit(job, local, node="n1", now_ms=now_ms + 1)


def test_failures_retry_up_to_max_restarts_and_preemptions_do_not_count() -> None:
    job = _placed(_job(max_restarts=2))
    job_rules.mark_running(job, node="n1", now_ms=3)
    job_rules.requeue_or_fail(job, lc.PREEMPTED, now_ms=4, reason="PREEMPTED", message="", failed=False)
    assert job.state == lc.PENDING
    for t in (10, 20):
        job_rules.place(job, [pb.TaskAssignment(node="n1")], now_ms=t)
        _fail(job, t + 1)
        assert job.state == lc.PENDING
    job_rules.place(job, [pb.TaskAssignment(node="n1")], now_ms=30)
    _fail(job, 31)
    assert job.state == lc.FAILED and lc.failure_restarts(job) == 2


def test_default_grpc_spec_does_not_retry_failures_forever() -> None:
    job = _placed(_job())  # proto defaults: restart policy unspecified (on failure), max_restarts 0
    _fail(job, 3)
    assert job.state == lc.FAILED


def test_never_runs_at_most_once_even_when_preempted() -> None:
    job = _placed(_job(restart_policy=pb.RESTART_POLICY_NEVER))
    job_rules.requeue_or_fail(job, lc.PREEMPTED, now_ms=4, reason="PREEMPTED", message="", failed=False)
    assert job.state == lc.FAILED and job.reason == "PREEMPTED"


def test_always_restarts_after_a_clean_exit_within_its_limit() -> None:
    job = _placed(_job(restart_policy=pb.RESTART_POLICY_ALWAYS, max_restarts=1))
    ok = apb.LocalJob(job_id=job.id, state=apb.LOCAL_JOB_STATE_EXITED, exit_code=0, reason="EXITED")
    job_rules.mark_running(job, node="n1", now_ms=3)
    job_rules.record_exit(job, ok, node="n1", now_ms=4)
    assert job.state == lc.PENDING
    job_rules.place(job, [pb.TaskAssignment(node="n1")], now_ms=5)
    job_rules.mark_running(job, node="n1", now_ms=6)
    job_rules.record_exit(job, ok, node="n1", now_ms=7)
    assert job.state == lc.SUCCEEDED
