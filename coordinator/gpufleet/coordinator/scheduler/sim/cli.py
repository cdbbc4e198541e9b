"""``gpufleet sim``: replay a trace through the scheduler, or generate a synthetic one.

    gpufleet sim --cluster cluster.json --jobs jobs.jsonl --out result.json [--policy NAME] [--seed N]
    gpufleet sim generate --out DIR [--seed N] [--nodes N] [--jobs N]

Bad input files exit 2 with a message naming the file, line and field.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator.scheduler.profiles import PROFILES, get_profile
from gpufleet.coordinator.scheduler.scheduler import Scheduler
from gpufleet.coordinator.scheduler.sim import generate
from gpufleet.coordinator.scheduler.sim.replay import ReplayResult, replay
from gpufleet.coordinator.scheduler.sim.trace import TraceError, load_cluster, load_jobs
from gpufleet.coordinator.scheduler.state import ClusterState


def _gen_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpufleet sim generate", description="write a synthetic cluster and trace")
    ap.add_argument("--out", type=Path, required=True, help="directory for cluster.json and jobs.jsonl")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.jobs < 1:
        print("gpufleet sim generate: --nodes and --jobs must be >= 1", file=sys.stderr)
        return 2
    c, j = generate.write(args.out, args.seed, args.nodes, args.jobs)
    print(f"wrote {c} ({args.nodes} nodes) and {j} ({args.jobs} jobs)")
    return 0


def summary(res: ReplayResult, n_jobs: int, elapsed_s: float) -> str:
    lines = [
        f"jobs: {n_jobs}  placed: {len(res.placements)}  unplaced: {len(res.unplaced)}  "
        f"MIG re-layouts: {res.relayouts}  preempted: {len(res.preempted)}  scheduler time: {elapsed_s:.2f}s",
        "GPU allocation ratio over time:",
    ]
    if res.samples:
        step = max(1, len(res.samples) // 10)
        picks = res.samples[::step]
        if picks[-1] is not res.samples[-1]:
            picks.append(res.samples[-1])
        for t, ratio in picks:
            lines.append(f"  t={t:>10.0f}s  {ratio * 100:5.1f}%  {'#' * round(ratio * 40)}")
        mean = sum(r for _, r in res.samples) / len(res.samples)
        lines.append(f"  mean {mean * 100:.1f}%  peak {max(r for _, r in res.samples) * 100:.1f}%")
    lines.append(
        f"fragmentation at the end: {res.end_fragmentation * 100:.1f}% of free GPU capacity stranded "
        "for the recent request mix"
    )
    if res.codes:
        lines.append("unplaced jobs by reason:")
        for code, n in res.codes.most_common():
            lines.append(f"  {code:<14} {n}")
        firsts: dict[str, int] = {}
        for reason in res.reasons.values():
            head = reason.split("; ")[1] if "; " in reason else reason
            firsts[head] = firsts.get(head, 0) + 1
        for head, n in sorted(firsts.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"    {n:>6}  {head}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "generate":
        return _gen_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="gpufleet sim",
        description="replay a job trace through the scheduler (subcommand: generate)",
    )
    ap.add_argument("--cluster", type=Path, required=True, help="cluster.json")
    ap.add_argument("--jobs", type=Path, required=True, help="jobs.jsonl")
    ap.add_argument("--out", type=Path, required=True, help="result.json to write")
    ap.add_argument("--policy", default="default", help=f"one of {', '.join(PROFILES)}")
    ap.add_argument("--seed", type=int, default=0, help="recorded in meta (the scheduler is deterministic)")
    args = ap.parse_args(argv)
    try:
        profile = get_profile(args.policy)
        nodes = load_cluster(args.cluster)
        jobs = load_jobs(args.jobs)
    except (TraceError, InvalidInputError) as e:
        print(f"gpufleet sim: {e}", file=sys.stderr)
        return 2
    state = ClusterState()
    for n in nodes:
        state.upsert_node(n)
    t0 = time.perf_counter()
    res = replay(state, jobs, Scheduler(profile))
    elapsed = time.perf_counter() - t0
    result = {
        "placements": res.placements,
        "unplaced": res.unplaced,
        "meta": {
            "policy": profile.name,
            "seed": args.seed,
            "nodes": len(nodes),
            "jobs": len(jobs),
            "gpu_capacity_milli": state.capacity_milli(),
            "unplaced_reasons": res.reasons,
            "unplaced_by_code": dict(res.codes),
            "allocation_samples": [[t, round(r, 4)] for t, r in res.samples],
            "end_fragmentation": round(res.end_fragmentation, 4),
            "mig_relayouts": res.relayouts,
            "preempted": res.preempted,
            "elapsed_s": round(elapsed, 3),
        },
    }
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    except OSError as e:
        print(f"gpufleet sim: cannot write --out {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    print(summary(res, len(jobs), elapsed))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
