"""``gpufleet sim``: a valid run reports every job exactly once; bad input exits 2 naming line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.common.cli import main as gpufleet


def write(tmp: Path, cluster: object, jobs: list[object] | str) -> tuple[Path, Path]:
    c, j = tmp / "cluster.json", tmp / "jobs.jsonl"
    c.write_text(json.dumps(cluster))
    j.write_text(jobs if isinstance(jobs, str) else "".join(json.dumps(x) + "\n" for x in jobs))
    return c, j


CLUSTER = {
    "nodes": [
        {"name": "a", "gpu_model": "H100-80GB", "gpus": 2, "cpu_milli": 32000, "memory_mib": 65536},
        {"name": "b", "gpu_model": "L4", "gpus": 1, "gpu_memory_mib": 23034, "cpu_milli": 8000, "memory_mib": 32768},
    ]
}


def job(i: int, gpus: float, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": f"j{i}",
        "submit_s": i,
        "duration_s": 10,
        "cpu_milli": 1000,
        "memory_mib": 1024,
        "gpus": gpus,
        "gpu_model": None,
    }
    return base | kw


def test_generate_then_replay_reports_every_job_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpufleet(["sim", "generate", "--out", str(tmp_path), "--nodes", "12", "--jobs", "300", "--seed", "3"]) == 0
    out = tmp_path / "result.json"
    rc = gpufleet(
        ["sim", "--cluster", str(tmp_path / "cluster.json"), "--jobs", str(tmp_path / "jobs.jsonl"), "--out", str(out)]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    ids = [json.loads(line)["id"] for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    reported = [p["id"] for p in result["placements"]] + result["unplaced"]
    assert sorted(reported) == sorted(ids)
    assert len(set(reported)) == len(reported)
    text = capsys.readouterr().out
    assert "GPU allocation ratio over time" in text and "fragmentation" in text


def test_placements_respect_departures_and_capacity(tmp_path: Path) -> None:
    jobs = [
        job(0, 2, gpu_model="H100-80GB"),  # fills node a until t=10
        job(1, 1, gpu_model="H100-80GB"),  # nothing free on a: unplaced (no waiting)
        job(2, 0.5),  # goes to b (the only GPU free)
        job(11, 1, gpu_model="H100-80GB"),  # j0 left at t=10
        job(12, 3),  # never fits
        job(13, 0, duration_s=None),
    ]
    c, j = write(tmp_path, CLUSTER, jobs)
    out = tmp_path / "r.json"
    assert gpufleet(["sim", "--cluster", str(c), "--jobs", str(j), "--out", str(out), "--policy", "binpack"]) == 0
    r = json.loads(out.read_text())
    placed = {p["id"]: p for p in r["placements"]}
    assert set(placed) == {"j0", "j2", "j11", "j13"}
    assert placed["j0"]["node"] == "a" and sorted(placed["j0"]["gpu_indices"]) == [0, 1]
    assert placed["j2"]["node"] == "b"
    assert placed["j13"]["gpu_indices"] == []
    assert r["unplaced"] == ["j1", "j12"]
    assert "could ever hold it" in r["meta"]["unplaced_reasons"]["j12"]


def test_higher_priority_arrival_preempts_in_the_simulator(tmp_path: Path) -> None:
    jobs = [
        job(0, 2, gpu_model="H100-80GB", priority="low", preemptible=True, duration_s=100),
        job(1, 2, gpu_model="H100-80GB", priority="high"),
        job(2, 2, gpu_model="H100-80GB", priority="high"),  # nothing preemptible left
    ]
    c, j = write(tmp_path, CLUSTER, jobs)
    out = tmp_path / "r.json"
    assert gpufleet(["sim", "--cluster", str(c), "--jobs", str(j), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [p["id"] for p in r["placements"]] == ["j0", "j1"]
    assert r["unplaced"] == ["j2"]
    assert [(p["id"], p["by"]) for p in r["meta"]["preempted"]] == [("j0", "j1")]


@pytest.mark.parametrize(
    ("cluster", "jobs", "needle"),
    [
        (CLUSTER, [job(0, 1), {"id": "x", "submit_s": -1, "gpus": 1}], "line 2: field 'submit_s'"),
        (CLUSTER, [job(0, 1.5)], "line 1: field 'gpus'"),
        (CLUSTER, "{not json\n", "line 1: invalid JSON"),
        (CLUSTER, [job(0, 1), job(0, 1)], "line 2: duplicate job id"),
        (CLUSTER, [job(0, 0, mig_profile="9g.99gb")], "line 1: field 'mig_profile'"),
        (CLUSTER, [job(0, 1, priority="urgent")], "line 1: field 'priority'"),
        ({"nodes": [{"name": "a", "gpus": 2, "cpu_milli": 1, "memory_mib": 1}]}, [job(0, 1)], "field 'gpu_model'"),
        (
            {"nodes": [{"name": "a", "gpu_model": "T4", "gpus": 1, "memory_mib": 1}]},
            [job(0, 1)],
            "missing field 'cpu_milli'",
        ),
        ({"nodes": []}, [job(0, 1)], "at least one node"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: object, jobs: list[object] | str, needle: str
) -> None:
    c, j = write(tmp_path, cluster, jobs)
    rc = gpufleet(["sim", "--cluster", str(c), "--jobs", str(j), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_unknown_policy_and_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c, j = write(tmp_path, CLUSTER, [job(0, 1)])
    assert gpufleet(["sim", "--cluster", str(c), "--jobs", str(j), "--out", str(tmp_path / "r"), "--policy", "x"]) == 2
    assert "unknown policy 'x'" in capsys.readouterr().err
    assert gpufleet(["sim", "--cluster", str(tmp_path / "nope.json"), "--jobs", str(j), "--out", "r"]) == 2
    assert "cannot read" in capsys.readouterr().err
