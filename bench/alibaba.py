"""Convert the public Alibaba GPU-sharing trace (``shared/binpack``, FGD's openb lists) for the simulator.

``nodes()`` gives ``pb.Node`` records for ``openb_node_list_gpu_node.csv``; ``pods()`` the pod list rows as
job descriptions; ``inflation_jobs()`` applies the paper's workload-inflation protocol (sample pods with
repetition and submit them one by one, nothing leaves, until the requested GPU capacity reaches a target
share of the cluster). ``python -m bench.alibaba --out DIR`` writes cluster.json + jobs.jsonl for
``gpufleet sim``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from gpufleet.coordinator.scheduler.sim.build import make_job, make_node
from gpufleet.coordinator.scheduler.sim.trace import SimJob
from gpufleet.proto.v1 import types_pb2 as pb

BINPACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "binpack"
POD_LISTS = ("default", "gpushare40", "multigpu20", "gpuspec10")


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str

    @property
    def gpu_request_milli(self) -> int:
        if self.num_gpu == 0:
            return 0
        return self.gpu_milli if self.num_gpu == 1 else self.num_gpu * 1000

    @property
    def gpus(self) -> float:
        if self.num_gpu == 1 and self.gpu_milli < 1000:
            return self.gpu_milli / 1000
        return float(self.num_gpu)


def csv_dir(root: Path | None = None) -> Path:
    d = (root or BINPACK).resolve() / "csv"
    if not (d / "openb_node_list_gpu_node.csv").is_file():
        raise FileNotFoundError(
            f"Alibaba trace not found at {d}: clone the repository with shared/binpack beside it "
            "(shared/binpack/csv/openb_node_list_gpu_node.csv)"
        )
    return d


def node_rows(root: Path | None = None) -> list[dict[str, str]]:
    with (csv_dir(root) / "openb_node_list_gpu_node.csv").open() as f:
        return list(csv.DictReader(f))


def nodes(root: Path | None = None) -> list[pb.Node]:
    return [
        make_node(r["sn"], r["model"], int(r["gpu"]), int(r["cpu_milli"]), int(r["memory_mib"]), nvlink=False)
        for r in node_rows(root)
    ]


def pod_lists(root: Path | None = None) -> list[str]:
    """Every pod list of the trace directory (``openb_pod_list_<name>.csv``): the paper's four first, then the
    others (any list in that format dropped there is benchmarked too)."""
    found = sorted(
        p.name.removeprefix("openb_pod_list_").removesuffix(".csv") for p in csv_dir(root).glob("openb_pod_list_*.csv")
    )
    return [n for n in POD_LISTS if n in found] + [n for n in found if n not in POD_LISTS]


def pod_list_path(name: str, root: Path | None = None) -> Path:
    """A pod list by name (``openb_pod_list_<name>.csv`` in the trace) or as a path to such a CSV file."""
    if name.endswith(".csv"):
        return Path(name)
    return csv_dir(root) / f"openb_pod_list_{name}.csv"


def pods(name: str = "default", root: Path | None = None) -> list[Pod]:
    """Rows of a pod list (see :func:`pod_list_path`): name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec."""
    with pod_list_path(name, root).open() as f:
        return [
            Pod(
                r["name"],
                int(r["cpu_milli"]),
                int(r["memory_mib"]),
                int(r["num_gpu"]),
                int(r["gpu_milli"]),
                (r.get("gpu_spec") or "").strip(),
            )
            for r in csv.DictReader(f)
        ]


def to_job(pod: Pod, job_id: str, t: float) -> SimJob:
    job = make_job(job_id, pod.gpus, pod.cpu_milli, pod.memory_mib, pod.gpu_spec or None, created_ms=int(t * 1000))
    return SimJob(job_id, t, None, job)


def inflation_jobs(pod_list: list[Pod], capacity_milli: int, target: float = 1.3, seed: int = 42) -> list[SimJob]:
    """Pods sampled with repetition until their GPU requests reach ``target`` x capacity; nothing leaves."""
    rng = random.Random(seed)
    out: list[SimJob] = []
    requested = 0
    while requested < target * capacity_milli:
        pod = pod_list[rng.randrange(len(pod_list))]
        out.append(to_job(pod, f"{pod.name}-{len(out)}", float(len(out))))
        requested += pod.gpu_request_milli
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.alibaba", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pods", default="default", help="a pod list name of the trace, or a path to a pod list CSV")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--target", type=float, default=1.3)
    args = ap.parse_args(argv)
    rows = node_rows()
    args.out.mkdir(parents=True, exist_ok=True)
    cluster = {
        "nodes": [
            {
                "name": r["sn"],
                "gpu_model": r["model"],
                "gpus": int(r["gpu"]),
                "cpu_milli": int(r["cpu_milli"]),
                "memory_mib": int(r["memory_mib"]),
            }
            for r in rows
        ]
    }
    (args.out / "cluster.json").write_text(json.dumps(cluster, indent=1))
    capacity = sum(int(r["gpu"]) for r in rows) * 1000
    rng = random.Random(args.seed)
    plist = pods(args.pods)
    requested = 0
    with (args.out / "jobs.jsonl").open("w") as f:
        k = 0
        while requested < args.target * capacity:
            p = plist[rng.randrange(len(plist))]
            line = {
                "id": f"{p.name}-{k}",
                "submit_s": k,
                "duration_s": None,
                "cpu_milli": p.cpu_milli,
                "memory_mib": p.memory_mib,
                "gpus": p.gpus,
                "gpu_model": p.gpu_spec or None,
            }
            f.write(json.dumps(line) + "\n")
            requested += p.gpu_request_milli
            k += 1
    print(f"wrote {args.out}/cluster.json ({len(rows)} nodes) and jobs.jsonl ({k} jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
