"""``gpufleet dev``: a whole local fleet on loopback: one coordinator (embedded store) and simulated agents.

``--agents N --gpus MODEL:COUNT`` starts N identical nodes; ``--fleet FILE`` starts the node groups a YAML
file describes (GPUs, CPU, memory, provider/region/zone, instance type, spot, labels), e.g.
``examples/fleet.yaml``, which ``make demo`` uses. Simulated nodes offer 16 CPUs and 128 GiB of memory per GPU
unless told otherwise, like the cloud instances they stand for.

Every component is a separate process started as ``python -m gpufleet.common.cli coordinator|agent ...`` (common
never imports the agent or coordinator modules). Ports are picked at run time unless ``--port`` is given. It prints
where everything listens plus the ``export GPUFLEET_COORDINATOR=...`` line, runs until Ctrl-C or ``--duration``,
then stops the agents and the coordinator (SIGTERM, then SIGKILL after a grace period) and the jobs they ran.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.quantities import parse_cpu_milli, parse_memory_mib

LISTEN_RE = re.compile(r"listening on (\S+)")
GPUS_RE = re.compile(r"^[A-Za-z0-9._-]+:[0-9]+(:mig)?(,[A-Za-z0-9._-]+:[0-9]+(:mig)?)*$")
CPU_PER_GPU = 16
MEMORY_MIB_PER_GPU = 128 * 1024


class NodeGroup(BaseModel):
    """One group of identical simulated nodes in a fleet file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    count: int = Field(default=1, ge=1, le=200)
    gpus: str
    cpu: int | str | None = None
    memory: int | str | None = None
    provider: str = ""
    region: str = ""
    zone: str = ""
    instance_type: str = ""
    spot: bool = False
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: str) -> str:
        if not GPUS_RE.match(v):
            raise ValueError(f"{v!r} is not MODEL:COUNT[:mig][,...] (e.g. H100-80GB:8 or A100-80GB:2:mig)")
        return v

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_cpu_milli(v)
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_memory_mib(v)
        return v

    def node_names(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}-{i}" for i in range(1, self.count + 1)]

    def agent_args(self) -> list[str]:
        n_gpus = sum(int(part.split(":")[1]) for part in self.gpus.split(","))
        cpu = str(self.cpu) if self.cpu is not None else str(max(1, n_gpus) * CPU_PER_GPU)
        memory = str(self.memory) if self.memory is not None else f"{max(1, n_gpus) * MEMORY_MIB_PER_GPU}Mi"
        args = ["--simulate", self.gpus, "--cpu", cpu, "--memory", memory, "--address", "127.0.0.1"]
        for flag, value in (
            ("--provider", self.provider),
            ("--region", self.region),
            ("--zone", self.zone),
            ("--instance-type", self.instance_type),
        ):
            if value:
                args += [flag, value]
        if self.spot:
            args.append("--spot")
        for key, value in self.labels.items():
            args += ["--label", f"{key}={value}"]
        return args


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: list[NodeGroup] = Field(min_length=1)


def load_fleet(path: Path) -> FleetFile:
    """Read a fleet file; every problem is reported with its field path (InvalidInputError)."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InvalidInputError(Problem("--fleet", f"cannot read {path}: {err}")) from None
    try:
        fleet = FleetFile.model_validate(data)
    except ValidationError as err:
        raise InvalidInputError([Problem(".".join(str(x) for x in e["loc"]), e["msg"]) for e in err.errors()]) from None
    names = [n for g in fleet.nodes for n in g.node_names()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(Problem("nodes", f"node names must be unique; repeated: {', '.join(dupes)}"))
    return fleet


STOP_GRACE_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpufleet dev", description="Run a local fleet: coordinator + simulated agents.")
    p.add_argument("--agents", type=int, default=2, help="number of simulated agents (default 2)")
    p.add_argument(
        "--gpus", default="H100-80GB:8", help="GPUs per agent, MODEL:COUNT[,MODEL:COUNT] (default H100-80GB:8)"
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--state-dir", type=Path, help="where state and logs go (default: a new temporary directory)")
    p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: any free port)")
    p.add_argument(
        "--fleet", type=Path, help="a YAML file of node groups (see examples/fleet.yaml); replaces --agents/--gpus"
    )
    return p


def _wait_address(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = LISTEN_RE.search(log.read_text(errors="replace")) if log.exists() else None
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {proc.returncode}; see {log}")
        time.sleep(0.05)
    raise RuntimeError(f"the coordinator did not start listening in {timeout_s:.0f}s; see {log}")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gpufleet.common.cli", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _kill_leftover_jobs(state: Path) -> int:
    """Jobs outlive their agent by design (agents re-adopt them); a dev fleet that stops takes its jobs along.
    They are recognised by their simulated-GPU directory, which lies under the fleet's state directory."""
    root = str(state.resolve())
    killed = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("GPUFLEET_SIM_DIR", "").startswith(root):
                proc.kill()
                killed += 1
    return killed


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _StopRequestedError(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise _StopRequestedError


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.agents < 0 or args.agents > 200:
        parser.error("--agents must be between 0 and 200")
    if not GPUS_RE.match(args.gpus):
        parser.error(f"--gpus {args.gpus!r} is not MODEL:COUNT[:mig][,MODEL:COUNT] (e.g. H100-80GB:8)")
    if args.fleet is not None:
        try:
            groups = load_fleet(args.fleet).nodes
        except InvalidInputError as err:
            for problem in err.problems:
                print(f"gpufleet dev: {args.fleet}: {problem}", file=sys.stderr)
            return 2
    else:
        groups = [NodeGroup(name="dev-node", count=args.agents, gpus=args.gpus)] if args.agents else []
    if not 0 <= args.port < 65536:
        parser.error("--port must be between 0 and 65535")
    if args.duration < 0:
        parser.error("--duration must be >= 0")
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="gpufleet-dev-"))
    state.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_stop)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        clog = state / "coordinator.log"
        coord = _spawn(
            [
                "coordinator",
                "--listen",
                f"127.0.0.1:{args.port}",
                "--store",
                "embedded",
                "--state-dir",
                str(state / "coordinator"),
                "--id",
                "dev-coordinator",
            ],
            clog,
        )
        procs.append(coord)
        address = _wait_address(coord, clog)
        print(f"coordinator  {address}  (log {clog})", flush=True)
        agents = []
        for group in groups:
            for name in group.node_names():
                alog = state / f"agent-{name}.log"
                agent_args = [
                    "agent",
                    "--coordinator",
                    address,
                    "--name",
                    name,
                    "--state-dir",
                    str(state / f"agent-{name}"),
                    "--metrics-port",
                    "0",
                    *group.agent_args(),
                ]
                agents.append(_spawn(agent_args, alog))
                where = "/".join(x for x in (group.provider, group.region) if x)
                extra = f"  {where}" if where else ""
                print(
                    f"agent        {name}  {group.gpus}{' spot' if group.spot else ''}{extra}  (log {alog})", flush=True
                )
        procs[:0] = agents  # stop agents first
        print(f"state        {state}", flush=True)
        print(f"export GPUFLEET_COORDINATOR={address}", flush=True)
        print("Ctrl-C stops the fleet." if not args.duration else f"running for {args.duration:g}s", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
            if coord.poll() is not None:
                print(f"the coordinator exited with code {coord.returncode}; see {clog}", file=sys.stderr)
                return 1
    except (KeyboardInterrupt, _StopRequestedError):
        pass
    except RuntimeError as exc:
        print(f"gpufleet dev: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the fleet ...", flush=True)
        _stop(procs)
        if _kill_leftover_jobs(state):
            print("stopped the jobs that were still running", flush=True)
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
