"""Declare GPU memory use on a simulated GPU, then hold it.

    python -m gpufleet.agent.backends.simulated.use --mib 2048 [--busy] [--seconds 30] [--gpu UUID|INDEX]
        [--pid PID] [--sim-dir DIR]

Writes ``$GPUFLEET_SIM_DIR/<pid>.json`` for its own pid (or ``--pid``), then sleeps ``--seconds`` (forever
when 0) and removes the file on exit. ``--busy`` also burns CPU, so the process behaves like a kernel loop
(useful to watch time-slicing). The GPU defaults to the first entry of ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from gpufleet.agent.backends.simulated.simfiles import SIM_DIR_ENV, write_use


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpufleet.agent.backends.simulated.use", description=__doc__)
    ap.add_argument("--mib", type=int, required=True, help="GPU memory this process uses (MiB)")
    ap.add_argument("--busy", action="store_true", help="keep the GPU (and one CPU) busy")
    ap.add_argument("--seconds", type=float, default=0.0, help="hold for this long; 0 = until killed")
    ap.add_argument("--gpu", default="", help="GPU uuid, MIG uuid or index (default: first CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--pid", type=int, default=0, help="declare for this pid instead of our own (no holding)")
    ap.add_argument("--sim-dir", default=os.environ.get(SIM_DIR_ENV, ""), help=f"default: ${SIM_DIR_ENV}")
    args = ap.parse_args(argv)
    if not args.sim_dir:
        print(f"error: --sim-dir or {SIM_DIR_ENV} is required (the agent sets it for jobs)", file=sys.stderr)
        return 2
    if args.mib < 0:
        print("error: --mib must be >= 0", file=sys.stderr)
        return 2
    gpu = args.gpu or os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    sim_dir = Path(args.sim_dir)
    if args.pid:
        write_use(sim_dir, args.pid, gpu, args.mib, args.busy)
        return 0
    path = write_use(sim_dir, os.getpid(), gpu, args.mib, args.busy)

    def _term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else float("inf")
    try:
        while time.monotonic() < deadline:
            if args.busy:
                end = time.monotonic() + 0.05
                while time.monotonic() < end:
                    pass
            else:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
