"""``gpufleet coordinator``: run one coordinator replica (or ``--check-config`` and exit).

Exit codes: 0 clean stop, 2 bad flags or configuration (the message names the flag or key), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from gpufleet.common.errors import GpuFleetError, InvalidInputError, Problem
from gpufleet.coordinator.config import CoordinatorSettings, load_settings, scheduler_config
from gpufleet.coordinator.store.registry import parse_store_url


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpufleet coordinator", description="Run a gpufleet coordinator replica.")
    p.add_argument("--listen", help="HOST:PORT to serve gRPC on (port 0: any free port)")
    p.add_argument("--store", help="etcd://h1:2379,h2:2379 or embedded (default) or embedded:///path/store.db")
    p.add_argument("--state-dir", type=Path, help="local state (embedded store file)")
    p.add_argument("--advertise", help="address others use to reach this replica (default: the listen address)")
    p.add_argument("--id", help="replica identity (default: coordinator-<port>)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--check-config", action="store_true", help="validate the configuration, print it and exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _check_hostport(flag: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidInputError(Problem(flag, f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:7070 or 0.0.0.0:0)"))


def settings_from_args(args: argparse.Namespace) -> CoordinatorSettings:
    overrides: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if args.listen is not None:
        _check_hostport("--listen", args.listen)
        server["listen"] = args.listen
    if args.advertise is not None:
        _check_hostport("--advertise", args.advertise)
        server["advertise"] = args.advertise
    if server:
        overrides["server"] = server
    if args.store is not None:
        overrides["store"] = {"url": args.store}
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    if args.id is not None:
        overrides["id"] = args.id
    return load_settings(args.config, **overrides)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
        parse_store_url(settings.store.url)
        scheduler_config(settings.scheduler)
        from gpufleet.coordinator.autoscaling import check_autoscaler_config

        check_autoscaler_config(settings)
    except InvalidInputError as exc:
        for p in exc.problems:
            print(f"gpufleet coordinator: {p}", file=sys.stderr)
        return 2
    if args.check_config:
        print(settings.model_dump_json(indent=2))
        return 0
    try:
        return asyncio.run(_run(settings))
    except KeyboardInterrupt:
        return 0
    except GpuFleetError as exc:
        print(f"gpufleet coordinator: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gpufleet coordinator: {exc}", file=sys.stderr)
        return 1


async def _run(settings: CoordinatorSettings) -> int:
    from gpufleet.coordinator.server import run_server
    from gpufleet.coordinator.store.registry import open_store

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store.url, settings.state_dir)
    await run_server(settings, store)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
