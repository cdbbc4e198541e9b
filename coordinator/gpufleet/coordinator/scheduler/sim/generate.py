"""``gpufleet sim generate``: a synthetic cluster.json + jobs.jsonl (seeded, reproducible).

The cluster mixes H100 nodes (some GPUs MIG-enabled with common layouts), A100 and L4 nodes in two regions;
the jobs mix CPU-only work, fractions, whole 1/2/4/8-GPU jobs, MIG slices and multi-node gangs, with
priorities, teams, a few deadlines and a few jobs that never end.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TEAMS = ("ml-infra", "research", "search", "vision")
MIG_LAYOUTS: tuple[list[str], ...] = (["3g.40gb", "3g.40gb"], ["2g.20gb", "2g.20gb", "2g.20gb"], ["1g.10gb"] * 7, [])


def cluster(rng: random.Random, n: int) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = []
    for i in range(n):
        kind = rng.choices(("h100", "a100", "l4"), weights=(5, 3, 2))[0]
        region = "sim-east" if i % 2 == 0 else "sim-west"
        node: dict[str, Any] = {
            "name": f"node-{i:04d}",
            "region": region,
            "zone": f"{region}-{'ab'[(i // 2) % 2]}",
        }
        if kind == "h100":
            node |= {"gpu_model": "H100-80GB", "gpus": 8, "cpu_milli": 192_000, "memory_mib": 2_097_152}
            if rng.random() < 0.3:
                node["mig_layouts"] = [list(rng.choice(MIG_LAYOUTS)) for _ in range(rng.randint(1, 2))]
        elif kind == "a100":
            node |= {"gpu_model": "A100-80GB", "gpus": 8, "cpu_milli": 128_000, "memory_mib": 1_048_576}
        else:
            node |= {"gpu_model": "L4", "gpus": 4, "cpu_milli": 48_000, "memory_mib": 196_608}
        nodes.append(node)
    return {"nodes": nodes}


def jobs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(1 / 5.0)
        kind = rng.choices(("cpu", "frac", "whole", "mig", "gang"), weights=(8, 35, 40, 10, 7))[0]
        job: dict[str, Any] = {
            "id": f"job-{i:05d}",
            "submit_s": round(t, 3),
            "duration_s": None if rng.random() < 0.03 else round(rng.expovariate(1 / 1800.0) + 30, 1),
            "cpu_milli": rng.choice((1000, 2000, 4000, 8000)),
            "memory_mib": rng.choice((2048, 8192, 32768)),
            "gpus": 0,
            "gpu_model": None,
            "team": rng.choice(TEAMS),
            "priority": rng.choices(("low", "normal", "high", "critical"), weights=(20, 60, 15, 5))[0],
        }
        job["preemptible"] = job["priority"] == "low"
        if kind == "frac":
            job["gpus"] = rng.choice((0.1, 0.25, 0.3, 0.5, 0.5, 0.75))
            if rng.random() < 0.3:
                job["gpu_model"] = "L4|A100-80GB"
        elif kind == "whole":
            job["gpus"] = rng.choices((1, 2, 4, 8), weights=(50, 20, 15, 15))[0]
            if rng.random() < 0.4:
                job["gpu_model"] = rng.choice(("H100-80GB", "A100-80GB", "H100-80GB|A100-80GB"))
        elif kind == "mig":
            job["mig_profile"] = rng.choice(("1g.10gb", "2g.20gb", "3g.40gb"))
            job["gpu_model"] = "H100-80GB"
        elif kind == "gang":
            job["gpus"] = 8
            job["nodes"] = rng.choice((2, 2, 4))
            job["gpu_model"] = "H100-80GB|A100-80GB"
        if rng.random() < 0.05 and job["duration_s"] is not None:
            job["deadline_s"] = round(t + job["duration_s"] * rng.uniform(1.5, 4), 1)
        out.append(job)
    return out


def write(out: Path, seed: int, nodes: int, n_jobs: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    cpath, jpath = out / "cluster.json", out / "jobs.jsonl"
    cpath.write_text(json.dumps(cluster(rng, nodes), indent=1) + "\n")
    jpath.write_text("".join(json.dumps(j) + "\n" for j in jobs(rng, n_jobs)))
    return cpath, jpath
