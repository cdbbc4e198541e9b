"""A small replay of the public Alibaba GPU-sharing trace (../shared/binpack) through the real scheduler."""

from __future__ import annotations

import random
from pathlib import Path

from gpufleet.coordinator.scheduler import ClusterState, Scheduler
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node
from gpufleet.coordinator.scheduler.sim.replay import replay
from gpufleet.coordinator.scheduler.sim.trace import SimJob

BINPACK = Path(__file__).resolve().parents[2] / ".." / "shared" / "binpack" / "csv"


def csv_rows(name: str) -> list[dict[str, str]]:
    import csv

    path = BINPACK / name
    assert path.is_file(), f"Alibaba trace missing: expected {path.resolve()} (clone with shared/binpack beside it)"
    with path.open() as f:
        return list(csv.DictReader(f))


def test_replay_of_a_trace_sample_packs_gpus_without_overcommit() -> None:
    rng = random.Random(7)
    nodes = csv_rows("openb_node_list_gpu_node.csv")
    sample = rng.sample(nodes, 60)
    st = ClusterState()
    for r in sample:
        st.upsert_node(make_node(r["sn"], r["model"], int(r["gpu"]), int(r["cpu_milli"]), int(r["memory_mib"])))
    capacity = st.capacity_milli()
    pods = csv_rows("openb_pod_list_gpushare40.csv")
    jobs: list[SimJob] = []
    requested = 0
    while requested < 1.1 * capacity:
        p = pods[rng.randrange(len(pods))]
        n, milli = int(p["num_gpu"]), int(p["gpu_milli"])
        gpus = milli / 1000 if n == 1 and milli < 1000 else float(n)
        jid = f"{p['name']}-{len(jobs)}"
        job = make_job(jid, gpus, int(p["cpu_milli"]), int(p["memory_mib"]), p["gpu_spec"] or None)
        jobs.append(SimJob(jid, float(len(jobs)), None, job))
        requested += milli if n == 1 else n * 1000
    res = replay(st, jobs, Scheduler())
    assert len(res.placements) + len(res.unplaced) == len(jobs)
    assert st.g_free_milli[: st.n].min() >= 0
    assert (st.n_free_cpu[: st.n] >= 0).all()
    assert st.allocated_milli() / capacity > 0.85  # arrivals reached 110% of capacity
    assert all(r for r in res.reasons.values())


def test_the_benchmark_finds_every_pod_list_and_reads_one_given_as_a_path(tmp_path: Path) -> None:
    from bench import alibaba

    lists = alibaba.pod_lists()
    assert lists[:4] == list(alibaba.POD_LISTS)  # the paper's four first; any other list there follows
    rows = csv_rows("openb_pod_list_default.csv")[:5]
    path = tmp_path / "openb_pod_list_mine.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        + "".join(f"{r['name']},{r['cpu_milli']},{r['memory_mib']},{r['num_gpu']},{r['gpu_milli']},\n" for r in rows)
    )
    pods = alibaba.pods(str(path))
    assert [p.name for p in pods] == [r["name"] for r in rows]
    assert all(p.gpu_request_milli >= 0 for p in pods)
