"""The one ``gpufleet`` console script: dispatches sub-commands to the module that implements them.

Modules are named, not imported, here, so ``common`` has no static import of the agent or the coordinator and
an agent host never loads cloud SDKs. Each target module has ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("gpufleet.agent.cli", "run the agent daemon on a GPU host"),
    "coordinator": ("gpufleet.coordinator.cli", "run a coordinator replica"),
    "dev": ("gpufleet.common.dev", "run a local fleet: coordinator + simulated agents"),
    "job": ("gpufleet.common.ctl", "submit, validate, list, get, cancel, watch jobs; read logs"),
    "node": ("gpufleet.common.ctl", "list, get, cordon, uncordon, drain nodes; MIG layouts"),
    "cluster": ("gpufleet.common.ctl", "cluster status: leader, replicas, store"),
    "cost": ("gpufleet.common.ctl", "cost report by team, project or job; budgets"),
    "sim": ("gpufleet.coordinator.scheduler.sim.cli", "replay a trace through the scheduler"),
    "catalog": ("gpufleet.coordinator.providers.catalog_cli", "instance types and prices a job fits"),
}

USAGE = "usage: gpufleet COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(
    f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    if args[0] in {"--version", "version"}:
        from importlib.metadata import version

        print(f"gpufleet {version('gpufleet')}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"gpufleet: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    # ctl serves several top-level commands and needs to know which one was used
    rv: int = module.main(args if entry[0] == "gpufleet.common.ctl" else args[1:])
    return rv


if __name__ == "__main__":
    sys.exit(main())
