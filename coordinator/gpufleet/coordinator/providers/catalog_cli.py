"""``gpufleet catalog``: which instance types a job could run on, and at what price (cheapest first).

    gpufleet catalog [--gpus 8] [--gpu-model H100-80GB] [--spot | --on-demand] [--provider aws] [--region R]
                     [--max-price 4.50] [-o table|json] [FILE.yaml]

A job file (FILE.yaml) supplies GPUs per node, GPU models, GPU memory, CPU, memory, spot policy, providers,
regions and the price ceiling from its spec; flags given as well narrow further. Bad input exits 2 with a
message naming the flag. Prices are the built-in dated catalog's (see providers/catalog/*.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from gpufleet.common.errors import InvalidInputError
from gpufleet.common.gpu_models import MODELS
from gpufleet.common.output import table
from gpufleet.common.quantities import format_micros, parse_price_micros
from gpufleet.coordinator.providers.catalog import Catalog, Offer
from gpufleet.proto.v1 import types_pb2 as pb


class _UsageError(Exception):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")


@dataclass
class Need:
    """What one node must offer."""

    gpus: int = 0
    gpu_models: list[str] = field(default_factory=list)
    gpu_memory_mib: int = 0
    cpu_milli: int = 0
    memory_mib: int = 0
    spot: bool | None = None  # None: both markets
    providers: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    max_price_per_gpu_micros: int = 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpufleet catalog", description="Instance types a job fits, cheapest first.")
    p.add_argument("file", nargs="?", metavar="FILE.yaml", help="a job spec to take the requirements from")
    p.add_argument("--gpus", type=int, help="GPUs needed on one node")
    p.add_argument("--gpu-model", action="append", default=[], help="allowed GPU model (repeatable)")
    market = p.add_mutually_exclusive_group()
    market.add_argument("--spot", action="store_true", help="spot/preemptible offers only")
    market.add_argument("--on-demand", action="store_true", help="on-demand offers only")
    p.add_argument("--provider", action="append", default=[], help="aws, gcp, azure, fake (repeatable)")
    p.add_argument("--region", action="append", default=[], help="region (repeatable)")
    p.add_argument("--max-price", help="ceiling in dollars per GPU-hour, e.g. 2.50")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    return p


def need_from_spec(spec: pb.JobSpec) -> Need:
    r = spec.resources
    gpus = r.gpu_milli // 1000 if r.gpu_milli >= 1000 else (1 if r.gpu_milli or r.mig_profile else 0)
    spot = {pb.SPOT_POLICY_NEVER: False, pb.SPOT_POLICY_REQUIRED: True}.get(spec.placement.spot)
    return Need(
        gpus=gpus,
        gpu_models=list(r.gpu_models),
        gpu_memory_mib=r.gpu_memory_mib,
        cpu_milli=r.cpu_milli,
        memory_mib=r.memory_mib,
        spot=spot,
        providers=list(spec.placement.providers),
        regions=list(spec.placement.regions),
        max_price_per_gpu_micros=spec.placement.max_price_micros_per_gpu_hour,
    )


def _need(args: argparse.Namespace, catalog: Catalog) -> Need:
    need = Need()
    if args.file:
        from gpufleet.common.jobspec import load_spec_file

        try:
            need = need_from_spec(load_spec_file(args.file))
        except (OSError, InvalidInputError) as e:
            raise _UsageError("FILE.yaml", str(e)) from None
    if args.gpus is not None:
        if args.gpus < 0:
            raise _UsageError("--gpus", f"must be >= 0, got {args.gpus}")
        need.gpus = args.gpus
    for m in args.gpu_model:
        if m not in MODELS:
            raise _UsageError("--gpu-model", f"unknown GPU model {m!r}; known: {', '.join(sorted(MODELS))}")
    if args.gpu_model:
        need.gpu_models = list(args.gpu_model)
    if args.spot:
        need.spot = True
    if args.on_demand:
        need.spot = False
    for prov in args.provider:
        if prov not in catalog.providers:
            raise _UsageError("--provider", f"unknown provider {prov!r}; known: {', '.join(catalog.providers)}")
    if args.provider:
        need.providers = list(args.provider)
    known_regions = {r for pc in catalog.providers.values() for r in pc.regions}
    for reg in args.region:
        if reg not in known_regions:
            raise _UsageError("--region", f"unknown region {reg!r}; known: {', '.join(sorted(known_regions))}")
    if args.region:
        need.regions = list(args.region)
    if args.max_price is not None:
        try:
            need.max_price_per_gpu_micros = parse_price_micros(args.max_price)
        except (ValueError, InvalidInputError) as e:
            raise _UsageError("--max-price", f"{args.max_price!r} is not a price in dollars ({e})") from None
    return need


def matching_offers(catalog: Catalog, need: Need) -> list[Offer]:
    """Offers with enough of everything, cheapest node first (then cheapest per GPU, then name)."""
    out = []
    for o in catalog.offers(
        providers=need.providers or [p for p in catalog.providers if p != "fake"],  # fake: only when asked
        regions=need.regions or None,
        spot=need.spot,
        gpu_models=need.gpu_models or None,
        min_gpus=need.gpus,
    ):
        t = o.instance_type
        if need.gpu_memory_mib and t.gpu_memory_mib < need.gpu_memory_mib:
            continue
        if t.vcpus * 1000 < need.cpu_milli or t.memory_mib < need.memory_mib:
            continue
        if need.max_price_per_gpu_micros and o.price_micros > need.max_price_per_gpu_micros * max(1, t.gpu_count):
            continue
        out.append(o)
    out.sort(key=lambda o: (o.price_micros, o.price_micros // max(1, o.instance_type.gpu_count), o.key))
    return out


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the message naming the flag
        return int(e.code or 0)
    catalog = Catalog.builtin()
    try:
        need = _need(args, catalog)
    except _UsageError as e:
        print(f"gpufleet catalog: {e}", file=sys.stderr)
        return 2
    offers = matching_offers(catalog, need)
    if args.output == "json":
        rows = [
            {
                "provider": o.provider,
                "region": o.region,
                "instance_type": o.instance_type.name,
                "gpu_model": o.instance_type.gpu_model,
                "gpus": o.instance_type.gpu_count,
                "gpu_memory_mib": o.instance_type.gpu_memory_mib,
                "vcpus": o.instance_type.vcpus,
                "memory_mib": o.instance_type.memory_mib,
                "spot": o.spot,
                "price_micros_per_hour": o.price_micros,
                "price_micros_per_gpu_hour": o.price_micros // max(1, o.instance_type.gpu_count),
                "as_of": catalog.providers[o.provider].as_of,
            }
            for o in offers
        ]
        print(json.dumps(rows, indent=2))
        return 0
    table(
        ["PROVIDER", "REGION", "TYPE", "GPUS", "MODEL", "VCPU", "MEMORY", "MARKET", "$/HOUR", "$/GPU-HOUR"],
        [
            (
                o.provider,
                o.region,
                o.instance_type.name,
                o.instance_type.gpu_count,
                o.instance_type.gpu_model,
                o.instance_type.vcpus,
                f"{o.instance_type.memory_mib // 1024}Gi",
                "spot" if o.spot else "on-demand",
                format_micros(o.price_micros),
                format_micros(o.price_micros // max(1, o.instance_type.gpu_count)),
            )
            for o in offers
        ],
    )
    dates = sorted({catalog.providers[o.provider].as_of for o in offers})
    if dates:
        print(f"prices as of {', '.join(dates)} (built-in catalog)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
