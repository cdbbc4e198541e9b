"""Starting, watching, stopping and re-adopting job processes.

Each job runs under ``supervisor.sh`` (a POSIX sh process, see that file) started in a new session, so the
supervisor's pid is also the job's process group id and the job survives the agent. The agent identifies a
job process by (pid, psutil create_time): a pid alone may have been recycled by the time an agent restarts.
The job's exit status reaches the agent through the exit file the supervisor writes atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from gpufleet.agent.local_state import (
    EXITED,
    FAILED_TO_START,
    RUNNING,
    STARTING,
    STOPPING,
    JobRecord,
    LocalState,
    atomic_write,
)
from gpufleet.common.clock import Clock, SystemClock

SUPERVISOR = Path(__file__).with_name("supervisor.sh")
LOG_FILE = "output.log"  # stdout and stderr, interleaved as a terminal shows them
#: exit code reported for a job whose process vanished without an exit status
LOST_EXIT_CODE = -1
#: create_time tolerance (s): psutil derives it from clock ticks, identical for the same process
_CREATE_TIME_TOLERANCE = 0.05


class JobRunner:
    """Process-level operations on one job attempt. Records are saved through ``state`` at every change."""

    def __init__(self, state: LocalState, clock: Clock | None = None, shell: str = "/bin/sh") -> None:
        self.state = state
        self.clock = clock or SystemClock()
        self.shell = shell
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # supervisors this process started (to reap)

    # ------------------------------------------------------------------ start

    def start(
        self,
        record: JobRecord,
        argv: Sequence[str],
        env: Mapping[str, str],
        working_dir: str,
    ) -> JobRecord:
        """Start ``argv`` for a STARTING ``record``; returns it RUNNING, or FAILED_TO_START with a message that
        says what is wrong (missing executable, bad working directory). Never raises for a bad command."""
        now = self.clock.now_ms()
        wd = working_dir or record.dir
        problem = self._preflight(argv, env, wd)
        if problem:
            return self._failed_to_start(record, problem, now)
        log = record.path / LOG_FILE
        self.state.save(record.evolve(state=STARTING, argv=tuple(argv)))
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [self.shell, str(SUPERVISOR), str(record.exit_path), *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd=wd,
                    env=dict(env),
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            return self._failed_to_start(record, f"cannot start the job's supervisor in {wd}: {e}", now)
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0  # already gone: the exit file (or its absence) tells the rest
        rec = record.evolve(
            state=RUNNING,
            pid=proc.pid,
            pgid=proc.pid,
            create_time=create_time,
            argv=tuple(argv),
            started_ms=now,
        )
        self.state.save(rec)
        return rec

    @staticmethod
    def _preflight(argv: Sequence[str], env: Mapping[str, str], wd: str) -> str:
        if not argv or not argv[0]:
            return "the job's command is empty; set spec.command to an argv list, e.g. ['python', 'train.py']"
        if not os.path.isdir(wd):
            return f"working directory {wd!r} does not exist on this node; fix spec.working_dir"
        if not os.access(wd, os.X_OK):
            return f"working directory {wd!r} is not accessible to the agent's user; fix spec.working_dir"
        exe = argv[0]
        if "/" in exe:
            path = exe if os.path.isabs(exe) else os.path.join(wd, exe)
            if not os.path.isfile(path):
                return f"executable {exe!r} not found (looked at {path}); fix spec.command[0]"
            if not os.access(path, os.X_OK):
                return f"{exe!r} is not executable; fix its permissions or spec.command[0]"
        elif shutil.which(exe, path=env.get("PATH", os.defpath)) is None:
            return f"executable {exe!r} not found in PATH={env.get('PATH', os.defpath)}; fix spec.command[0]"
        return ""

    def _failed_to_start(self, record: JobRecord, message: str, now: int) -> JobRecord:
        rec = record.evolve(
            state=FAILED_TO_START,
            exit_code=LOST_EXIT_CODE,
            reason="FAILED_TO_START",
            message=message,
            started_ms=now,
            finished_ms=now,
        )
        self.state.save(rec)
        return rec

    # ------------------------------------------------------------------ watch

    def is_alive(self, record: JobRecord) -> bool:
        """Whether the record's supervisor is still running: same pid AND same start time, not a zombie."""
        if record.pid <= 0:
            return False
        child = self._children.get(record.pid)
        if child is not None and child.poll() is not None:
            del self._children[record.pid]  # reaped: our own child exited
            return False
        try:
            p = psutil.Process(record.pid)
            if abs(p.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE:
                return False  # a recycled pid: some other process
            return p.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def read_exit_file(self, record: JobRecord) -> tuple[int, int] | None:
        """(exit code, finished ms) from the supervisor's exit file, or None while there is none."""
        try:
            st = record.exit_path.stat()
            text = record.exit_path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            code = int(text)
        except ValueError:
            code = LOST_EXIT_CODE
        return code, st.st_mtime_ns // 1_000_000

    def check(self, record: JobRecord) -> JobRecord | None:
        """The finished record when a RUNNING/STOPPING job has ended (saved), else None."""
        if record.finished:
            return None
        result = self.read_exit_file(record)
        if result is None:
            if self.is_alive(record):
                return None
            result = self.read_exit_file(record)  # it may have written the file just before exiting
        if result is None:
            rec = record.evolve(
                state=EXITED,
                exit_code=LOST_EXIT_CODE,
                reason="LOST_ON_NODE",
                message="the job's process is gone and left no exit status (killed with its supervisor, or the "
                "host rebooted)",
                finished_ms=self.clock.now_ms(),
            )
        else:
            code, finished_ms = result
            reason = record.stop_reason or "EXITED"
            message = record.stop_message or _describe_exit(code)
            rec = record.evolve(state=EXITED, exit_code=code, reason=reason, message=message, finished_ms=finished_ms)
        self._reap(rec.pid)
        self._kill_leftovers(rec)
        self.state.save(rec)
        return rec

    def _reap(self, pid: int) -> None:
        """Collect our own finished supervisor so it does not linger as a zombie."""
        child = self._children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                return
            del self._children[pid]

    def adopt(self, record: JobRecord) -> JobRecord:
        """Re-adopt a record found at agent start: RUNNING when its process still runs, else finished."""
        if record.finished:
            return record
        if record.state == STARTING and record.pid == 0:
            found = self._find_supervisor(record)
            if found is not None:
                record = record.evolve(state=RUNNING, pid=found.pid, pgid=found.pid, create_time=found.create_time())
                self.state.save(record)
        done = self.check(record)
        return done if done is not None else record

    def _find_supervisor(self, record: JobRecord) -> psutil.Process | None:
        """A supervisor started just before the agent crashed, before its pid was recorded."""
        exit_path = str(record.exit_path)
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if len(cmd) >= 3 and cmd[1] == str(SUPERVISOR) and cmd[2] == exit_path:
                return p
        return None

    # ------------------------------------------------------------------ stop

    def signal_group(self, record: JobRecord, sig: int) -> None:
        """Send ``sig`` to the job's whole process group, only while its supervisor is verifiably ours."""
        if self.is_alive(record):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pgid, sig)
        else:
            for p in self._group_members(record):
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)

    async def stop(self, record: JobRecord, reason: str, message: str, grace_s: float) -> JobRecord:
        """SIGTERM the job's processes, wait up to ``grace_s``, then SIGKILL every process left in its group.
        Returns the finished record (exit code from the supervisor, 137 when it had to be killed too)."""
        if record.finished:
            return record
        if record.state != STOPPING or not record.stop_reason:
            record = record.evolve(
                state=STOPPING, stop_reason=reason, stop_message=message, stop_requested_ms=self.clock.now_ms()
            )
            self.state.save(record)
        signalled = self._terminate(record)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        killed = False
        while loop.time() < deadline:
            if self._ended(record):
                break
            await asyncio.sleep(0.1)
            signalled = self._terminate(record, signalled)
        else:
            killed = True
            # kill the job's processes but not the supervisor, so it still records the job's status
            sup = record.pid if self.is_alive(record) else 0
            for p in self._group_members(record):
                if p.pid != sup:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
            kill_deadline = loop.time() + 2.0
            while loop.time() < kill_deadline and not self._ended(record):
                await asyncio.sleep(0.05)
            if not self._ended(record):
                self.signal_group(record, signal.SIGKILL)
                await asyncio.sleep(0.1)
                self.is_alive(record)  # reap
        if self.read_exit_file(record) is None and not self.is_alive(record):
            # the supervisor itself died (killed at the deadline, or terminated before it could start the job):
            # record the status it would have written, by the only signal we sent
            sig = signal.SIGKILL if killed else signal.SIGTERM
            atomic_write(record.exit_path, b"%d\n" % (128 + sig))
        done = self.check(record)
        return done if done is not None else record

    def _terminate(self, record: JobRecord, done: set[tuple[int, str]] | None = None) -> set[tuple[int, str]]:
        """SIGTERM every process of the job's group once (the job and its children, e.g. torchrun workers),
        but not the supervisor: it would forward a second SIGTERM to the job. Signalled alone (by an operator),
        the supervisor forwards SIGTERM to the job itself.

        ``done`` holds the (pid, name) pairs already signalled; called again during the grace period, only a
        process that is new, or has exec'd another program since (a TERM that reached a freshly forked shell
        child before its exec is lost), is signalled. Returns the updated set."""
        done = set() if done is None else done
        supervisor_alive = self.is_alive(record)
        members = [p for p in self._group_members(record) if not (supervisor_alive and p.pid == record.pid)]
        for p in members:
            with contextlib.suppress(psutil.Error):
                key = (p.pid, p.name())
                if key not in done:
                    p.send_signal(signal.SIGTERM)
                    done.add(key)
        if not members and supervisor_alive and (record.pid, "") not in done:
            # the job is not forked yet: the supervisor delivers the stop once it exists
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(record.pid, signal.SIGTERM)
            done.add((record.pid, ""))
        return done

    def _ended(self, record: JobRecord) -> bool:
        """Nothing of the job is left: its supervisor is gone (having written the exit file, unless it was
        itself terminated before starting the job) and no other process of its group is alive."""
        return not self.is_alive(record) and not self._group_members(record)

    def _group_members(self, record: JobRecord) -> list[psutil.Process]:
        """Live processes in the job's process group started no earlier than its supervisor."""
        if record.pgid <= 0:
            return []
        out = []
        for p in psutil.process_iter(["create_time", "status"]):
            try:
                if os.getpgid(p.pid) != record.pgid:
                    continue
            except (ProcessLookupError, PermissionError):
                continue
            if p.info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            if (p.info.get("create_time") or 0.0) + _CREATE_TIME_TOLERANCE < record.create_time:
                continue  # predates the job: pgid reuse, not ours
            out.append(p)
        return out

    def _kill_leftovers(self, record: JobRecord) -> None:
        """Processes a finished job left behind in its group would hold its GPUs: kill them."""
        for p in self._group_members(record):
            with contextlib.suppress(psutil.Error):
                p.kill()


def _describe_exit(code: int) -> str:
    if code == 0:
        return "exited with code 0"
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return f"exited with code {code}"
        return f"killed by {name} (exit code {code})"
    if code == 127:
        return "exited with code 127 (command not found)"
    return f"exited with code {code}"
