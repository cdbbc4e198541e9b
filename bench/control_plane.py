"""Control-plane benchmark: API throughput, submit-to-running latency with many agents, leader failover time.

Everything runs as real processes on loopback (etcd, three coordinators, simulated agents) through
``tests/helpers/fleet.py``. It prints tables and asserts nothing. Each figure comes with a baseline measured in
the same run on the same machine:

* throughput: SubmitJob/s against the raw gRPC unary rate of the same server (grpc.health.v1 Check);
* latency: submit -> RUNNING against submit -> SCHEDULED (the part spent in the coordinator) and the agents'
  status interval (how often an agent can report that a job started), at 200 ms and at the default 500 ms;
* failover: kill -9 of the leader -> first placement by the new leader, against the leader lease TTL.

Targets (2-core machine): >= 500 submissions/s, p99 submit-to-running < 1 s, failover < 5 s.
``--quick`` uses fewer agents, jobs and kills.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpufleet.common import lifecycle as lc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import jobs_pb2_grpc
from gpufleet.proto.v1 import types_pb2 as pb
from tests.helpers.etcd_server import EtcdServer
from tests.helpers.fleet import Fleet, job_spec

STATUS_INTERVAL_MS = 200
#: the coordinator's default agents.status_interval_ms, measured too (an agent reports a start with its next status)
DEFAULT_STATUS_INTERVAL_MS = 500
LEADER_TTL_S = 3


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def row(*cols: object) -> str:
    return "  ".join(f"{c:<28}" if i == 0 else f"{c!s:>14}" for i, c in enumerate(cols))


# ---------------------------------------------------------------------------------------------- throughput


async def _rate(address: str, n: int, concurrency: int, submit: bool) -> float:
    async with grpc.aio.insecure_channel(address) as ch:
        jobs = jobs_pb2_grpc.JobServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        spec = job_spec(["true"], nodes=1, gpu_milli=1000)
        left = [n]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                if submit:
                    req = jpb.SubmitJobRequest(spec=spec, request_id=uuid.uuid4().hex)
                    await jobs.SubmitJob(req, timeout=60)
                else:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=60)

        t = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return n / (time.perf_counter() - t)


def throughput(tmp: Path, n: int) -> None:
    print(f"\n== API throughput: {n} SubmitJob calls, 64 in flight, no agents (jobs stay pending)")
    print(row("store", "submits/s", "raw unary/s", "ratio", "target"))
    for kind in ("etcd", "embedded"):
        etcd = EtcdServer(tmp / f"tp-{kind}-etcd") if kind == "etcd" else None
        if etcd is not None:
            etcd.start()
        fleet = Fleet(tmp / f"tp-{kind}", store_url=etcd.url if etcd else "embedded", leader_ttl_s=LEADER_TTL_S)
        try:
            fleet.start_coordinator("c1")
            addr = fleet.leader_address()
            raw = asyncio.run(_rate(addr, min(n, 1000), 64, submit=False))
            rate = asyncio.run(_rate(addr, n, 64, submit=True))
            print(row(kind, f"{rate:.0f}", f"{raw:.0f}", f"{rate / raw:.2f}", ">= 500"))
        finally:
            fleet.stop_all()
            if etcd is not None:
                etcd.kill()


# ---------------------------------------------------------------------------------------------- latency


def latency(fleet: Fleet, jobs: int, rate_per_s: float, status_interval_ms: int) -> None:
    print(f"\n== submit -> running: {jobs} jobs at {rate_per_s:g}/s on {len(fleet.agents)} agents")
    submitted: dict[str, int] = {}
    for _ in range(jobs):
        t_ms = time.time_ns() // 1_000_000
        job = fleet.submit(job_spec(["sleep", "3"], nodes=1, gpu_milli=1000)).job
        submitted[job.id] = t_ms
        time.sleep(1 / rate_per_s)
    to_running: list[float] = []
    to_scheduled: list[float] = []
    deadline = time.monotonic() + 60
    pending = set(submitted)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = fleet.get_job(job_id)
            at = {t.to_state: t.at_ms for t in job.history}
            if lc.RUNNING in at:
                to_running.append((at[lc.RUNNING] - submitted[job_id]) / 1000)
                to_scheduled.append((at[lc.SCHEDULED] - submitted[job_id]) / 1000)
                pending.discard(job_id)
            elif job.state in lc.TERMINAL:
                pending.discard(job_id)
        time.sleep(0.2)
    print(row("measure", "p50 s", "p99 s", "max s", "jobs"))
    print(row("submit -> SCHEDULED", *(f"{pct(to_scheduled, q):.3f}" for q in (50, 99, 100)), len(to_scheduled)))
    print(row("submit -> RUNNING", *(f"{pct(to_running, q):.3f}" for q in (50, 99, 100)), len(to_running)))
    print(row("agent status interval", f"{status_interval_ms / 1000:.3f}", "", "", ""))
    if pending:
        print(f"({len(pending)} jobs never reported RUNNING within 60 s)")


# ---------------------------------------------------------------------------------------------- failover


def failover(fleet: Fleet, kills: int) -> None:
    print(f"\n== failover: {kills} x kill -9 of the leader -> first placement by the new leader")
    times: list[float] = []
    for _ in range(kills):
        old = fleet.leader()
        t0_ms = time.time_ns() // 1_000_000
        old.kill()
        job = fleet.submit(job_spec(["true"], nodes=1, gpu_milli=1000)).job
        placed = fleet.wait_job(job.id, lambda j: any(t.to_state == lc.SCHEDULED for t in j.history), 60)
        at = next(t.at_ms for t in placed.history if t.to_state == lc.SCHEDULED)
        times.append((at - t0_ms) / 1000)
        fleet.restart_coordinator(old.name)
    print(row("measure", "p50 s", "max s", "kills", "lease TTL s"))
    print(row("kill -9 -> first placement", f"{pct(times, 50):.2f}", f"{max(times):.2f}", len(times), LEADER_TTL_S))


def _fleet(tmp: Path, etcd: EtcdServer, agents: int, status_interval_ms: int) -> Fleet:
    fleet = Fleet(
        tmp,
        store_url=etcd.url,
        node_timeout_s=30,
        leader_ttl_s=LEADER_TTL_S,
        status_interval_ms=status_interval_ms,
    )
    for name in ("c1", "c2", "c3"):
        fleet.start_coordinator(name)
    t = time.monotonic()
    for i in range(agents):
        fleet.start_agent(f"node-{i:02d}", gpus="H100-80GB:8", extra=["--metrics-port", "0"])
    fleet.wait_nodes(agents, timeout_s=300, state=pb.NODE_STATE_READY)
    print(f"\n({agents} agents registered in {time.monotonic() - t:.1f}s; status every {status_interval_ms} ms)")
    return fleet


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 agents, fewer jobs, 3 kills")
    args = p.parse_args(argv)
    agents, jobs, kills, submits = (10, 40, 3, 1000) if args.quick else (50, 200, 10, 3000)
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-cp-") as d:
        tmp = Path(d)
        throughput(tmp, submits)
        for n, interval in enumerate((STATUS_INTERVAL_MS, DEFAULT_STATUS_INTERVAL_MS)):
            etcd = EtcdServer(tmp / f"etcd{n}")
            etcd.start()
            fleet: Fleet | None = None
            try:
                fleet = _fleet(tmp / f"fleet{n}", etcd, agents, interval)
                latency(fleet, jobs if n == 0 else jobs // 2, rate_per_s=20, status_interval_ms=interval)
                if n == 0:
                    failover(fleet, kills)
            finally:
                if fleet is not None:
                    fleet.stop_all()
                etcd.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
