"""``make demo``: a local fleet with simulated GPUs, the examples/ jobs submitted to it, and a live view.

It starts ``gpufleet dev --fleet examples/fleets/demo.yaml`` (a coordinator and simulated agents as separate
processes on loopback), submits every spec in ``examples/`` through the real API, and redraws nodes and jobs
every second until every job has finished (or ``--timeout``), then shows one job's history and logs, the cost
report, and stops the fleet. ``--keep`` leaves the fleet running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpufleet.common import lifecycle
from gpufleet.common.api_client import ApiClient
from gpufleet.common.errors import GpuFleetError
from gpufleet.common.jobspec import load_spec_file
from gpufleet.common.output import table
from gpufleet.common.quantities import format_gpus, format_micros
from gpufleet.proto.v1 import types_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
EXPORT_RE = re.compile(r"export GPUFLEET_COORDINATOR=(\S+)")
NODES_RE = re.compile(r"^agent\s", re.M)


def _start_fleet(fleet: Path, state: Path) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet.common.cli", "dev", "--fleet", str(fleet), "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise GpuFleetError(f"gpufleet dev exited with code {proc.returncode}:\n{seen}")
        seen += line
        print("  " + line.rstrip(), flush=True)
        m = EXPORT_RE.search(line)
        if m:
            return proc, m.group(1), len(NODES_RE.findall(seen))
    raise GpuFleetError(f"gpufleet dev did not start in 60s:\n{seen}")


def _placement(job: pb.Job) -> str:
    out = []
    for t in job.assignments:
        devs = []
        for d in t.devices:
            if d.mig_profile:
                devs.append(f"{d.gpu_index}:{d.mig_profile}")
            elif 0 < d.gpu_milli < 1000:
                devs.append(f"{d.gpu_index}@{format_gpus(d.gpu_milli)}")
            else:
                devs.append(str(d.gpu_index))
        out.append(f"{t.node}[{','.join(devs)}]")
    return " ".join(out) or "-"


def _render(client: ApiClient, started: float, tty: bool, last: dict[str, str]) -> list[pb.Job]:
    nodes = client.list_nodes()
    jobs = sorted(client.list_jobs(), key=lambda j: j.created_ms)
    if tty:
        sys.stdout.write("\x1b[2J\x1b[H")
        print(f"gpufleet demo — {time.monotonic() - started:5.1f}s   (Ctrl-C to stop)\n")
        table(
            ("NODE", "STATE", "GPUS", "ALLOCATED", "JOBS", "WHERE"),
            [
                (
                    n.inventory.name,
                    pb.NodeState.Name(n.state).removeprefix("NODE_STATE_") + (",CORDONED" if n.cordoned else ""),
                    f"{len(n.inventory.gpus)}x{n.inventory.gpus[0].model}" if n.inventory.gpus else "0",
                    f"{format_gpus(n.allocated_gpu_milli)}/{format_gpus(n.capacity_gpu_milli)}",
                    len(n.job_ids),
                    "/".join(x for x in (n.inventory.provider, n.inventory.region) if x)
                    + (" spot" if n.inventory.spot else ""),
                )
                for n in sorted(nodes, key=lambda n: n.inventory.name)
            ],
        )
        print()
        table(
            ("JOB", "NAME", "STATE", "PLACEMENT", "WHY"),
            [
                (j.id, j.spec.name, lifecycle.state_name(j.state), _placement(j), (j.message or j.reason)[:60])
                for j in jobs
            ],
        )
        sys.stdout.flush()
    else:
        for j in jobs:
            key = f"{lifecycle.state_name(j.state)} {_placement(j)}"
            if last.get(j.id) != key:
                last[j.id] = key
                why = (
                    f"  ({j.message or j.reason})"
                    if j.state == pb.JOB_STATE_PENDING or j.state in lifecycle.TERMINAL
                    else ""
                )
                print(
                    f"{time.monotonic() - started:6.1f}s  {j.spec.name:<20} {lifecycle.state_name(j.state):<10} {_placement(j)}{why}",
                    flush=True,
                )
    return jobs


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpufleet-demo", description=__doc__)
    p.add_argument("--fleet", type=Path, default=ROOT / "examples" / "fleets" / "demo.yaml")
    p.add_argument("--examples", type=Path, default=ROOT / "examples")
    p.add_argument("--timeout", type=float, default=120.0, help="stop waiting for jobs after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the fleet running until Ctrl-C")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    specs = [(f, load_spec_file(f)) for f in sorted(args.examples.glob("*.yaml"))]
    state = Path(tempfile.mkdtemp(prefix="gpufleet-demo-"))
    tty = sys.stdout.isatty() and os.environ.get("TERM", "dumb") != "dumb"
    print(f"starting a local fleet from {args.fleet} (state and logs in {state})", flush=True)
    proc, address, n_agents = _start_fleet(args.fleet, state)
    rc = 0
    try:
        with ApiClient(address) as client:
            deadline = time.monotonic() + 60
            while len([n for n in client.list_nodes() if n.state == pb.NODE_STATE_READY]) < n_agents:
                if time.monotonic() > deadline:
                    raise GpuFleetError("not every agent registered within 60s; see the logs in " + str(state))
                time.sleep(0.3)
            print(f"\n{n_agents} nodes ready; submitting {len(specs)} jobs from {args.examples}:", flush=True)
            for path, spec in specs:
                job = client.submit_job(spec).job
                print(f"  {job.id}  {spec.name:<22} from {path.name}", flush=True)
            started = time.monotonic()
            last: dict[str, str] = {}
            jobs: list[pb.Job] = []
            while time.monotonic() - started < args.timeout:
                jobs = _render(client, started, tty, last)
                if jobs and all(j.state in lifecycle.TERMINAL for j in jobs):
                    break
                time.sleep(1.0)
            print()
            done = [j for j in jobs if j.state == pb.JOB_STATE_SUCCEEDED]
            print(f"{len(done)} of {len(jobs)} jobs succeeded.", flush=True)
            if jobs:
                gang = next((j for j in jobs if j.spec.nodes > 1), jobs[0])
                print(f"\n$ gpufleet job get {gang.id}   (history of transitions)")
                subprocess.run(
                    [sys.executable, "-m", "gpufleet.common.cli", "job", "get", gang.id, "--coordinator", address],
                    check=False,
                )
                print(f"\n$ gpufleet job logs {gang.id} --tail 4")
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "gpufleet.common.cli",
                        "job",
                        "logs",
                        gang.id,
                        "--tail",
                        "4",
                        "--coordinator",
                        address,
                    ],
                    check=False,
                )
            report = client.cost_report(group_by=0)
            print("\ncost by team: " + ", ".join(f"{r.key} {format_micros(r.cost_micros)}" for r in report.rows))
            rc = 0 if len(done) == len(jobs) else 1
            if args.keep:
                print(f"\nthe fleet keeps running: export GPUFLEET_COORDINATOR={address}; Ctrl-C stops it")
                while proc.poll() is None:
                    time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except GpuFleetError as err:
        print(f"demo: {err}", file=sys.stderr)
        rc = 1
    finally:
        print("stopping the fleet ...", flush=True)
        _stop(proc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
