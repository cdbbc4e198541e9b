"""Autoscaler planner benchmark: hourly cost of the chosen fleet vs an integer-program optimum, and planning time.

For each synthetic demand trace the planner (coordinator/autoscaler/planner.py) picks new nodes from the
built-in catalog for pools on AWS, GCP and Azure, and from a synthetic catalog whose bigger nodes are cheaper per
GPU (there the packing matters). The same demand is then solved exactly as an integer program
with PuLP/CBC using the same per-node fit numbers (taken from the real scheduler through the planner's
``SchedulerFit``), the same offers, pool limits and gang rules. The program lets jobs of one shape spread over
nodes by aggregate capacity, so it is a lower bound on any real packing: a ratio of 1.000 is optimal.

Planning time is measured for 10,000 pending jobs, cold (first pass: the fit answers are asked of the
scheduler) and warm (later passes, as in the running autoscaler). Targets: cost within 5% of optimal, planning
under 1 s.

    python bench/autoscaler.py [--seed 7] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pulp

from gpufleet.common.output import table
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, NodePoolConfig, SpotMode
from gpufleet.coordinator.autoscaler.planner import UNITS, Planner, SchedulerFit, Shape, allowed, pool_offers, shape_of
from gpufleet.coordinator.providers.catalog import Catalog, parse_catalog
from gpufleet.proto.v1 import types_pb2 as pb

POOLS = AutoscalerConfig(
    pools=[
        NodePoolConfig(
            name="aws", provider="aws", regions=["us-east-1", "us-west-2"], spot=SpotMode.PREFER, max_nodes=20000
        ),
        NodePoolConfig(name="gcp", provider="gcp", regions=["us-central1"], spot=SpotMode.PREFER, max_nodes=20000),
        NodePoolConfig(name="azure", provider="azure", regions=["eastus"], spot=SpotMode.NEVER, max_nodes=20000),
    ],
    max_launches_per_pass=20000,
)

# (weight, gpus, model, nodes, spot policy, cpu_milli, memory_mib)
MIXES: dict[str, list[tuple[int, float, str, int, int, int, int]]] = {
    "inference-small": [
        (6, 1, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 4000, 16384),
        (3, 0.5, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 2000, 8192),
        (1, 1, "T4", 1, pb.SPOT_POLICY_NEVER, 4000, 16384),
    ],
    "training": [
        (4, 8, "H100-80GB", 1, pb.SPOT_POLICY_NEVER, 64000, 512000),
        (2, 8, "H100-80GB", 2, pb.SPOT_POLICY_NEVER, 64000, 512000),
        (3, 4, "A100-80GB", 1, pb.SPOT_POLICY_UNSPECIFIED, 32000, 200000),
        (3, 1, "A100-40GB", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 60000),
    ],
    "packing": [
        (3, 3, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (2, 0.75, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 2000, 8192),
        (2, 0.5, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 2000, 8192),
        (1, 5, "L4", 1, pb.SPOT_POLICY_NEVER, 16000, 65536),
        (2, 2, "A10G", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (1, 1, "L4", 3, pb.SPOT_POLICY_NEVER, 4000, 16384),
    ],
    "mixed": [
        (5, 1, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 4000, 16384),
        (2, 2, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (2, 0.25, "T4", 1, pb.SPOT_POLICY_UNSPECIFIED, 1000, 4096),
        (1, 8, "A100-80GB", 1, pb.SPOT_POLICY_NEVER, 32000, 400000),
        (1, 8, "H100-80GB", 2, pb.SPOT_POLICY_NEVER, 64000, 512000),
        (2, 1, "", 1, pb.SPOT_POLICY_REQUIRED, 2000, 8192),
    ],
}


def discount_catalog() -> Catalog:
    """A synthetic provider whose bigger nodes are cheaper per GPU, so packing decisions matter."""

    def t(name: str, gpus: int, price: float) -> dict[str, object]:
        prices = {"r1": {"on_demand": int(price * 1e6), "spot": int(price * 0.4e6)}}
        return {
            "name": name,
            "gpu_model": "L4",
            "gpu_count": gpus,
            "vcpus": 12 * gpus,
            "memory_mib": 65536 * gpus,
            "prices": prices,
        }

    doc = {
        "provider": "synthetic",
        "as_of": "2026-11-01",
        "source": "benchmark",
        "regions": {"r1": {"zones": ["r1a"]}},
        "instance_types": [t("l4-1", 1, 1.00), t("l4-2", 2, 1.80), t("l4-4", 4, 3.40), t("l4-8", 8, 6.40)],
    }
    return Catalog([parse_catalog(doc, "synthetic")])


DISCOUNT_POOLS = AutoscalerConfig(
    pools=[NodePoolConfig(name="syn", provider="synthetic", regions=["r1"], spot=SpotMode.NEVER, max_nodes=20000)],
    max_launches_per_pass=20000,
)
DISCOUNT_MIXES: dict[str, list[tuple[int, float, str, int, int, int, int]]] = {
    "discount-odd": [
        (3, 3, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (2, 5, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (3, 1, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 4000, 16384),
        (2, 0.5, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 2000, 8192),
        (1, 2, "L4", 2, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
    ],
    "discount-halves": [
        (4, 6, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (3, 2, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 8000, 32768),
        (2, 0.25, "L4", 1, pb.SPOT_POLICY_UNSPECIFIED, 1000, 4096),
    ],
}
MIXES_ALL = {**MIXES, **DISCOUNT_MIXES}


def make_jobs(mix: str, n: int, rng: random.Random) -> list[pb.Job]:
    rows = MIXES_ALL[mix]
    weights = [r[0] for r in rows]
    jobs = []
    for i in range(n):
        _, gpus, model, nodes, spot, cpu, mem = rng.choices(rows, weights)[0]
        spec = pb.JobSpec(
            name=f"{mix}-{i}",
            command=["true"],
            resources=pb.Resources(
                gpu_milli=int(gpus * 1000), gpu_models=[model] if model else [], cpu_milli=cpu, memory_mib=mem
            ),
            nodes=nodes,
            priority="normal",
            placement=pb.PlacementPolicy(spot=spot),  # type: ignore[arg-type]
        )
        jobs.append(pb.Job(id=f"{mix}-{i:05d}", spec=spec, state=pb.JOB_STATE_PENDING, priority_value=100))
    return jobs


def optimum(catalog: Catalog, fit: SchedulerFit, config: AutoscalerConfig, jobs: list[pb.Job]) -> tuple[int, str]:
    """Minimum hourly cost of new nodes holding ``jobs`` (aggregate-capacity integer program)."""
    offers = pool_offers(config, catalog)
    by_shape: dict[Shape, list[str]] = defaultdict(list)
    for j in jobs:
        by_shape[shape_of(j)].append(j.id)
    prob = pulp.LpProblem("fleet", pulp.LpMinimize)
    x = {i: pulp.LpVariable(f"x{i}", lowBound=0, cat="Integer") for i in range(len(offers))}
    load: dict[int, list[pulp.LpAffineExpression]] = defaultdict(list)
    for si, (shape, ids) in enumerate(by_shape.items()):
        caps = {
            i: c
            for i, po in enumerate(offers)
            if allowed(shape, po) and (c := fit.caps(shape.resources, [po.itype]).get(po.itype.name, 0)) > 0
        }
        if not caps:
            continue
        if shape.nodes == 1:
            y = {i: pulp.LpVariable(f"y{si}_{i}", lowBound=0, cat="Integer") for i in caps}
            prob += pulp.lpSum(y.values()) == len(ids)
            for i, c in caps.items():
                load[i].append(y[i] * -(-UNITS // c))
            continue
        locations = sorted({offers[i].location for i in caps})
        for gi, _gang in enumerate(ids):
            z = {loc: pulp.LpVariable(f"z{si}_{gi}_{li}", cat="Binary") for li, loc in enumerate(locations)}
            prob += pulp.lpSum(z.values()) == 1
            for loc in locations:
                members = []
                for i, c in caps.items():
                    if offers[i].location != loc:
                        continue
                    m = pulp.LpVariable(f"m{si}_{gi}_{i}", lowBound=0, cat="Integer")
                    prob += m <= x[i]  # one member per node
                    members.append(m)
                    load[i].append(m * -(-UNITS // c))
                prob += pulp.lpSum(members) == shape.nodes * z[loc]
    for i, terms in load.items():
        prob += pulp.lpSum(terms) <= UNITS * x[i]
    for pool in config.pools:
        prob += pulp.lpSum(x[i] for i, po in enumerate(offers) if po.pool == pool.name) <= pool.max_nodes
    prob += pulp.lpSum(x[i] * po.price for i, po in enumerate(offers))
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=60))
    return round(float(pulp.value(prob.objective) or 0)), pulp.LpStatus[prob.status]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=10_000, help="pending jobs for the timing rows")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    catalog = Catalog.builtin(["aws", "gcp", "azure"])
    fit = SchedulerFit()
    planner = Planner(catalog, fit)

    syn_catalog = discount_catalog()
    syn_fit = SchedulerFit()
    syn_planner = Planner(syn_catalog, syn_fit)
    cases = [(m, catalog, fit, planner, POOLS) for m in MIXES]
    cases += [(m, syn_catalog, syn_fit, syn_planner, DISCOUNT_POOLS) for m in DISCOUNT_MIXES]
    rows = []
    worst = 1.0
    for mix, cat, fit_, planner_, pools in cases:
        for n in (12, 60, 400):
            jobs = make_jobs(mix, n, rng)
            plan = planner_.plan(pools, jobs, verify=False)
            opt, status = optimum(cat, fit_, pools, jobs)
            ratio = plan.new_cost_micros_per_hour / opt if opt else float("nan")
            worst = max(worst, ratio)
            rows.append(
                (
                    mix,
                    n,
                    plan.node_count,
                    f"${plan.new_cost_micros_per_hour / 1e6:,.2f}",
                    f"${opt / 1e6:,.2f}",
                    status,
                    f"{ratio:.3f}",
                    len(plan.unplaceable),
                )
            )
    print("Cost of the planner's fleet vs the integer-program optimum (same fit, offers, limits; lower bound)")
    table(["TRACE", "JOBS", "NODES", "PLANNER $/H", "OPTIMUM $/H", "SOLVER", "RATIO", "UNPLACEABLE"], rows)
    print(f"worst ratio {worst:.3f} (target <= 1.050)\n")

    timing = []
    for mix, cat, _fit, _planner, pools in cases:
        jobs = make_jobs(mix, args.jobs, rng)
        cold_planner = Planner(cat, SchedulerFit())
        t0 = time.perf_counter()
        cold_planner.plan(pools, jobs, verify=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = cold_planner.plan(pools, jobs, verify=False)
        warm = time.perf_counter() - t0
        timing.append(
            (
                mix,
                len(jobs),
                len({shape_of(j) for j in jobs}),
                plan.node_count,
                f"{cold * 1000:.0f} ms",
                f"{warm * 1000:.0f} ms",
                cold_planner.fit.scheduler_calls,
            )
        )
    print(f"Planning time for {args.jobs} pending jobs (target < 1000 ms)")
    table(["TRACE", "JOBS", "SHAPES", "NODES", "COLD", "WARM", "SCHEDULER CALLS"], timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
