"""JobRunner with real processes: exit codes, stop (TERM then KILL of the whole group), preflight failures,
re-adoption by (pid, start time) and refusal of a recycled pid."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpufleet.agent.jobs.runner import LOG_FILE, JobRunner
from gpufleet.agent.local_state import EXITED, FAILED_TO_START, RUNNING, STARTING, JobRecord, LocalState

PY = sys.executable


def new_record(state: LocalState, job_id: str, attempt: int = 1) -> JobRecord:
    d = state.create_dir(job_id, attempt)
    return JobRecord(job_id=job_id, attempt=attempt, state=STARTING, dir=str(d))


def wait_finished(runner: JobRunner, rec: JobRecord, timeout: float = 10.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = runner.check(rec)
        if done is not None:
            return done
        time.sleep(0.05)
    raise AssertionError(f"job {rec.job_id} did not finish in {timeout}s")


def assert_group_gone(pgid: int, timeout: float = 3.0) -> None:
    """No process of the group is left (zombies are reaped by init shortly after the kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still has members")


@pytest.fixture
def state(tmp_path: Path) -> LocalState:
    return LocalState(tmp_path / "state")


def test_exit_code_and_log_are_collected(state: LocalState) -> None:
    runner = JobRunner(state)
    rec = runner.start(
        new_record(state, "j-exit"), ["sh", "-c", "echo out; echo err >&2; exit 7"], dict(os.environ), ""
    )
    assert rec.state == RUNNING and rec.pid > 0 and rec.pgid == rec.pid
    done = wait_finished(runner, rec)
    assert done.state == EXITED and done.exit_code == 7 and done.reason == "EXITED"
    log = (done.path / LOG_FILE).read_text()
    assert "out" in log and "err" in log
    # the finished record is persisted
    [loaded] = state.load_all()
    assert loaded.exit_code == 7 and loaded.state == EXITED


def test_missing_executable_and_bad_working_dir_fail_to_start(state: LocalState, tmp_path: Path) -> None:
    runner = JobRunner(state)
    rec = runner.start(new_record(state, "j-missing"), ["no-such-binary-xyz", "--flag"], dict(os.environ), "")
    assert rec.state == FAILED_TO_START
    assert "no-such-binary-xyz" in rec.message and "not found" in rec.message
    rec2 = runner.start(new_record(state, "j-badwd"), ["true"], dict(os.environ), str(tmp_path / "nowhere"))
    assert rec2.state == FAILED_TO_START and "working directory" in rec2.message


async def test_stop_kills_a_term_ignoring_job_and_its_child(state: LocalState, tmp_path: Path) -> None:
    runner = JobRunner(state)
    child_pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {child_pid_file}; wait; wait"
    rec = runner.start(new_record(state, "j-stubborn"), ["sh", "-c", script], dict(os.environ), "")
    deadline = time.monotonic() + 5
    while not child_pid_file.exists() or not child_pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = psutil.Process(int(child_pid_file.read_text()))
    t0 = time.monotonic()
    done = await runner.stop(rec, "STOPPED", "removed from desired state", grace_s=0.5)
    assert time.monotonic() - t0 >= 0.5  # it waited the grace period before killing
    assert done.state == EXITED and done.reason == "STOPPED"
    assert done.exit_code == 128 + 9
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert_group_gone(rec.pgid)


async def test_stop_of_a_well_behaved_job_is_prompt(state: LocalState) -> None:
    runner = JobRunner(state)
    rec = runner.start(new_record(state, "j-term"), [PY, "-c", "import time; time.sleep(300)"], dict(os.environ), "")
    time.sleep(0.3)
    done = await runner.stop(rec, "STOPPED", "", grace_s=20)
    assert done.exit_code == 128 + 15 and done.reason == "STOPPED"


def test_readopt_by_pid_and_start_time_and_refuse_recycled_pid(state: LocalState) -> None:
    first = JobRunner(state)
    rec = first.start(new_record(state, "j-adopt"), ["sleep", "300"], dict(os.environ), "")
    try:
        sup = psutil.Process(rec.pid)  # the per-job supervisor is a small sh, not a Python interpreter
        assert sup.name() in ("sh", "dash") and sup.memory_info().rss < 16 * 1024 * 1024
        assert os.getsid(rec.pid) == rec.pid  # its own session: it does not die with the agent
        # a second runner (as after an agent restart) adopts it: same pid, still running
        second = JobRunner(state)
        [loaded] = state.load_all()
        adopted = second.adopt(loaded)
        assert adopted.state == RUNNING and adopted.pid == rec.pid
        # the same pid with a different start time is another process: never adopted
        forged = loaded.evolve(create_time=loaded.create_time - 1000)
        lost = JobRunner(state).adopt(forged)
        assert lost.state == EXITED and lost.reason == "LOST_ON_NODE" and lost.exit_code == -1
    finally:
        os.killpg(rec.pgid, 9)


def test_exit_while_agent_was_down_is_collected_from_the_exit_file(state: LocalState) -> None:
    rec = JobRunner(state).start(new_record(state, "j-down"), ["sh", "-c", "exit 3"], dict(os.environ), "")
    deadline = time.monotonic() + 5
    while not rec.exit_path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [loaded] = state.load_all()
    done = JobRunner(state).adopt(loaded)
    assert done.state == EXITED and done.exit_code == 3


def test_sigterm_is_not_ignored_in_the_job(state: LocalState, tmp_path: Path) -> None:
    out = tmp_path / "sig"
    runner = JobRunner(state)
    rec = runner.start(
        new_record(state, "j-sig"), ["sh", "-c", f"grep SigIgn /proc/self/status > {out}"], dict(os.environ), ""
    )
    wait_finished(runner, rec)
    ignored = int(out.read_text().split()[1], 16)
    assert not ignored & (1 << (15 - 1)), "SIGTERM is ignored in the job"
    assert not ignored & (1 << (2 - 1)), "SIGINT is ignored in the job"


async def test_stop_terms_the_jobs_children_too(state: LocalState) -> None:
    runner = JobRunner(state)
    rec = runner.start(new_record(state, "j-tree"), ["sh", "-c", "sleep 300; echo never"], dict(os.environ), "")
    time.sleep(0.3)
    done = await runner.stop(rec, "STOPPED", "", grace_s=60)
    assert done.exit_code == 128 + 15  # ended by SIGTERM: no SIGKILL after the grace period was needed
    assert_group_gone(rec.pgid)


def test_sigterm_sent_to_the_supervisor_alone_is_forwarded_to_the_job(state: LocalState) -> None:
    runner = JobRunner(state)
    rec = runner.start(new_record(state, "j-fwd"), ["sleep", "300"], dict(os.environ), "")
    time.sleep(0.3)
    os.kill(rec.pid, 15)
    done = wait_finished(runner, rec)
    assert done.exit_code == 128 + 15 and done.reason == "EXITED"


async def test_a_stop_right_after_start_terminates_the_job_instead_of_killing_it(state: LocalState) -> None:
    """The agent sees a job as soon as its supervisor exists; a SIGTERM that reaches the supervisor before it
    forked the job must still reach the job (not leave it running until SIGKILL at the deadline)."""
    runner = JobRunner(state)
    for i in range(15):
        rec = runner.start(new_record(state, f"j-race-{i}"), ["sleep", "300"], dict(os.environ), "")
        started = time.monotonic()
        done = await runner.stop(rec, "STOPPED", "", grace_s=20)
        assert done.exit_code == 128 + 15, f"attempt {i}: exit {done.exit_code} (SIGKILL after the grace period)"
        assert time.monotonic() - started < 10
