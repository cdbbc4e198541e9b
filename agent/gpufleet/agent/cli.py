"""``gpufleet agent``: run the agent daemon on a GPU host (or with simulated GPUs).

    gpufleet agent --coordinator ADDR[,ADDR...] --name NODE [--state-dir DIR]
                   [--simulate H100-80GB:8[,L4:2]] [--metrics-port N] [--config FILE] [--check-config]
                   [--provider P] [--region R] [--zone Z] [--instance-type T] [--label k=v ...]
                   [--address ADDR] [--log-level LEVEL]

Flags override the config file and ``GPUFLEET_AGENT__*`` environment variables (see agent/config.py).
Exit status: 0 after a clean shutdown (SIGTERM/SIGINT; jobs keep running), 2 for bad flags or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gpufleet.agent.config import load_settings
from gpufleet.common.errors import GpuFleetError, InvalidInputError
from gpufleet.common.quantities import parse_cpu_milli, parse_memory_mib


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"gpufleet agent: error: {message} (see 'gpufleet agent --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpufleet agent", description="Run the gpufleet agent daemon on a GPU host.")
    p.add_argument("--coordinator", help="coordinator address(es) HOST:PORT[,HOST:PORT...] (or GPUFLEET_COORDINATOR)")
    p.add_argument("--name", help="node name, unique in the fleet (default: the short hostname)")
    p.add_argument("--state-dir", type=Path, help="job records and logs (default /var/lib/gpufleet/agent)")
    p.add_argument(
        "--simulate",
        metavar="MODEL:COUNT[:mig][,...]",
        help="simulated GPUs, e.g. H100-80GB:8,L4:2; :mig starts a group with MIG mode on (A100-80GB:2:mig)",
    )
    p.add_argument("--gpu-backend", help="'nvml' (default without --simulate) or simulate:MODEL:COUNT[,...]")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--config", type=Path, help="TOML config file (default /etc/gpufleet/agent.toml if present)")
    p.add_argument("--check-config", action="store_true", help="validate the configuration, print it and exit")
    p.add_argument("--provider")
    p.add_argument("--region")
    p.add_argument("--zone")
    p.add_argument("--instance-type")
    p.add_argument("--instance-id")
    p.add_argument("--spot", action="store_true", default=None, help="this host is a spot/preemptible instance")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="node label (repeatable)")
    p.add_argument("--address", help="address other nodes reach this one at (gang rendezvous)")
    p.add_argument("--cpu", help="CPUs offered to jobs, e.g. 96 or 500m (default: every CPU of this host)")
    p.add_argument("--memory", help="memory offered to jobs, e.g. 1TiB or 512GiB (default: all of it)")
    p.add_argument("--join-token", help="token the coordinator may require")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as settings overrides (unset flags are left out)."""
    if args.simulate and args.gpu_backend:
        raise InvalidInputError("use either --simulate or --gpu-backend, not both", field="--simulate")
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{item!r} is not KEY=VALUE; e.g. --label pool=training", field="--label")
        labels[key] = value
    try:
        cpu_milli = parse_cpu_milli(args.cpu) if args.cpu is not None else None
    except ValueError as e:
        raise InvalidInputError(str(e), field="--cpu") from None
    try:
        memory_mib = parse_memory_mib(args.memory) if args.memory is not None else None
    except ValueError as e:
        raise InvalidInputError(str(e), field="--memory") from None
    out: dict[str, Any] = {
        "coordinators": args.coordinator,
        "name": args.name,
        "state_dir": args.state_dir,
        "gpu_backend": f"simulate:{args.simulate}" if args.simulate else args.gpu_backend,
        "metrics_port": args.metrics_port,
        "provider": args.provider,
        "region": args.region,
        "zone": args.zone,
        "instance_type": args.instance_type,
        "instance_id": args.instance_id,
        "spot": args.spot,
        "address": args.address,
        "labels": labels or None,
        "cpu_milli": cpu_milli,
        "memory_mib": memory_mib,
    }
    if args.join_token is not None:
        out["connection"] = {"join_token": args.join_token}
    return {k: v for k, v in out.items() if v is not None}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(args.config, overrides_from_args(args))
        if settings.gpu_backend.startswith("simulate"):
            from gpufleet.agent.backends.simulated import parse_topology

            parse_topology(settings.gpu_backend.partition(":")[2])
    except InvalidInputError as e:
        for problem in e.problems:
            print(f"gpufleet agent: {problem}", file=sys.stderr)
        return 2
    if args.check_config:
        print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True, default=str))
        print("configuration OK", file=sys.stderr)
        return 0
    from gpufleet.agent.daemon import AgentDaemon

    try:
        daemon = AgentDaemon(settings)
    except InvalidInputError as e:
        for problem in e.problems:
            print(f"gpufleet agent: {problem}", file=sys.stderr)
        return 2
    except GpuFleetError as e:
        print(f"gpufleet agent: cannot start: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(daemon.run())
    except InvalidInputError as e:
        for problem in e.problems:
            print(f"gpufleet agent: {problem}", file=sys.stderr)
        return 2
    return 0
