"""LocalState: atomic per-job records, acknowledgement tombstones, path safety, log retention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpufleet.agent.local_state import EXITED, RUNNING, JobRecord, LocalState
from gpufleet.common.errors import InvalidInputError


def test_records_round_trip_and_tombstones(tmp_path: Path) -> None:
    st = LocalState(tmp_path)
    d = st.create_dir("j-1", 2)
    rec = JobRecord(
        job_id="j-1",
        attempt=2,
        state=RUNNING,
        dir=str(d),
        pid=123,
        pgid=123,
        create_time=1.25,
        argv=("a", "b"),
        assignment=b"\x01\x02",
        started_ms=10,
    )
    st.save(rec)
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    [loaded] = st.load_all()
    assert loaded == rec
    assert st.exists("j-1", 2) and not st.exists("j-1", 1)
    st.acknowledge(rec.evolve(state=EXITED))
    assert st.load_all() == [] and st.exists("j-1", 2)  # never started again
    assert st.latest_dir("j-1") == d


def test_corrupt_record_is_set_aside(tmp_path: Path) -> None:
    st = LocalState(tmp_path)
    d = st.create_dir("j-bad", 1)
    (d / "record.json").write_text("{not json")
    assert st.load_all() == []
    assert any(p.name.startswith("record.corrupt") for p in d.iterdir())


@pytest.mark.parametrize("job_id", ["../etc", "a/b", "", ".hidden"])
def test_job_ids_cannot_escape_the_state_dir(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(InvalidInputError, match="job id"):
        LocalState(tmp_path).job_dir(job_id, 1)


def test_garbage_collection_keeps_recent_and_unacknowledged(tmp_path: Path) -> None:
    st = LocalState(tmp_path)
    old = st.create_dir("j-old", 1)
    new = st.create_dir("j-new", 1)
    running = st.create_dir("j-run", 1)
    for d in (old, new):
        (d / "acked.json").write_text("{}")
    st.save(JobRecord(job_id="j-run", attempt=1, state=RUNNING, dir=str(running)))
    os.utime(old / "acked.json", (1, 1))
    assert st.collect_garbage(3600) == [old]
    assert not old.exists() and new.exists() and running.exists()
