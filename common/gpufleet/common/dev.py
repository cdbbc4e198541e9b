"""``gpufleet dev``: a whole local fleet on loopback: one coordinator (embedded store) and N simulated agents.

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

import psutil

LISTEN_RE = re.compile(r"listening on (\S+)")
GPUS_RE = re.compile(r"^[A-Za-z0-9._-]+:[0-9]+(,[A-Za-z0-9._-]+:[0-9]+)*$")
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
        parser.error(f"--gpus {args.gpus!r} is not MODEL:COUNT[,MODEL:COUNT] (e.g. H100-80GB:8)")
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
        for i in range(1, args.agents + 1):
            name = f"dev-node-{i}"
            alog = state / f"agent-{name}.log"
            agents.append(
                _spawn(
                    [
                        "agent",
                        "--coordinator",
                        address,
                        "--name",
                        name,
                        "--simulate",
                        args.gpus,
                        "--state-dir",
                        str(state / f"agent-{name}"),
                        "--metrics-port",
                        "0",
                    ],
                    alog,
                )
            )
            print(f"agent        {name}  {args.gpus}  (log {alog})", flush=True)
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
