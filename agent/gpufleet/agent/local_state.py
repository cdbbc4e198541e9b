"""The agent's local record of every job it started, kept in the state directory so a restarted agent can
re-adopt running jobs and still report jobs that finished while it was down.

Layout (one directory per job attempt, so logs of earlier attempts survive)::

    STATE_DIR/jobs/<job_id>.<attempt>/record.json   the JobRecord (written atomically: tmp + rename)
    STATE_DIR/jobs/<job_id>.<attempt>/stdout.log     the job's stdout (appended by the job)
    STATE_DIR/jobs/<job_id>.<attempt>/stderr.log
    STATE_DIR/jobs/<job_id>.<attempt>/exit_code      written by the per-job supervisor when the job exits
    STATE_DIR/jobs/<job_id>.<attempt>/acked.json     the record after the coordinator acknowledged the exit

A directory with ``acked.json`` is a tombstone: that attempt is never started again, and its logs stay
readable until :meth:`LocalState.collect_garbage` removes it after the retention period.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gpufleet.common.errors import InvalidInputError

RECORD = "record.json"
ACKED = "acked.json"
EXIT_FILE = "exit_code"
STDOUT = "stdout.log"
STDERR = "stderr.log"

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: job states kept in records (the LocalJobState names without prefix)
STARTING = "STARTING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
EXITED = "EXITED"
FAILED_TO_START = "FAILED_TO_START"
FINISHED_STATES = frozenset({EXITED, FAILED_TO_START})


def check_job_id(job_id: str) -> str:
    """Job ids name directories: refuse anything that could escape the state directory."""
    if not _JOB_ID_RE.match(job_id):
        raise InvalidInputError(
            f"job id {job_id!r} is not usable as a directory name; use letters, digits, '.', '_' and '-'",
            field="job_id",
        )
    return job_id


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything the agent must remember about one job attempt across its own restarts."""

    job_id: str
    attempt: int
    state: str  # one of STARTING, RUNNING, STOPPING, EXITED, FAILED_TO_START
    dir: str  # the attempt's directory (logs, exit file)
    pid: int = 0  # the supervisor's pid (also the process group id and session id)
    pgid: int = 0
    create_time: float = 0.0  # psutil create_time of the supervisor: pid + this identify the process
    argv: tuple[str, ...] = ()
    assignment: bytes = b""  # serialized pb.TaskAssignment
    grace_period_s: int = 30
    max_runtime_s: int = 0  # spec.max_runtime_s: stopped with MAX_RUNTIME_EXCEEDED after this long (0: never)
    started_ms: int = 0
    finished_ms: int = 0
    exit_code: int = 0
    reason: str = ""  # EXITED, STOPPED, LOST_ON_NODE, FAILED_TO_START, GPU_MEMORY_LIMIT_EXCEEDED, ...
    message: str = ""
    stop_reason: str = ""  # set when the agent asked the job to stop; becomes ``reason`` on exit
    stop_message: str = ""
    stop_requested_ms: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def stdout_path(self) -> Path:
        return self.path / STDOUT

    @property
    def stderr_path(self) -> Path:
        return self.path / STDERR

    @property
    def exit_path(self) -> Path:
        return self.path / EXIT_FILE

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        d["assignment"] = self.assignment.hex()
        d["argv"] = list(self.argv)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        d = json.loads(text)
        d["assignment"] = bytes.fromhex(d.get("assignment", ""))
        d["argv"] = tuple(d.get("argv", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LocalState:
    """The job records under ``STATE_DIR/jobs``. Not thread-safe; the daemon uses it from its event loop."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.jobs_dir = state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str, attempt: int) -> Path:
        return self.jobs_dir / f"{check_job_id(job_id)}.{attempt}"

    def exists(self, job_id: str, attempt: int) -> bool:
        """True when this attempt was ever started here (running, finished or acknowledged)."""
        d = self.job_dir(job_id, attempt)
        return (d / RECORD).exists() or (d / ACKED).exists()

    def create_dir(self, job_id: str, attempt: int) -> Path:
        d = self.job_dir(job_id, attempt)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save(self, record: JobRecord) -> None:
        atomic_write(record.path / RECORD, record.to_json().encode())

    def load_all(self) -> list[JobRecord]:
        """Every unacknowledged record, oldest first. A corrupt record is skipped and renamed aside."""
        out: list[JobRecord] = []
        for d in sorted(self.jobs_dir.iterdir()):
            p = d / RECORD
            if not p.is_file():
                continue
            try:
                rec = JobRecord.from_json(p.read_text())
            except (ValueError, TypeError, KeyError) as e:
                p.rename(p.with_name(f"record.corrupt.{int(time.time())}"))
                print(f"gpufleet-agent: ignoring corrupt job record {p}: {e}", flush=True)
                continue
            out.append(rec.evolve(dir=str(d)))
        out.sort(key=lambda r: (r.started_ms, r.job_id))
        return out

    def acknowledge(self, record: JobRecord) -> None:
        """The coordinator recorded this exit: keep a tombstone (never restart it) and the logs."""
        src = record.path / RECORD
        if src.exists():
            os.replace(src, record.path / ACKED)

    def latest_dir(self, job_id: str) -> Path | None:
        """The directory of the highest attempt of ``job_id`` (for reading logs), or None."""
        check_job_id(job_id)
        best: tuple[int, Path] | None = None
        for d in self.jobs_dir.glob(f"{job_id}.*"):
            suffix = d.name[len(job_id) + 1 :]
            if suffix.isdigit() and (best is None or int(suffix) > best[0]):
                best = (int(suffix), d)
        return best[1] if best else None

    def collect_garbage(self, retention_s: float, now: float | None = None) -> list[Path]:
        """Remove acknowledged job directories older than ``retention_s``; returns what was removed."""
        now = time.time() if now is None else now
        removed = []
        for d in self.jobs_dir.iterdir():
            acked = d / ACKED
            if acked.exists() and not (d / RECORD).exists() and now - acked.stat().st_mtime > retention_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        return removed
