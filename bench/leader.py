"""Leader loop benchmark: whole scheduling cycles of the leader (plan, then commit through the store) with a deep
queue, and how many job records each cycle rewrites.

In one process: the embedded store, a real leader elector, the fleet view and the coordinator's own
``SchedulingLoop`` (no gRPC, no agents: placed jobs stay SCHEDULED, which binds them like running ones). A
1,000-node x 8 H100 fleet is filled to about 85 % with the scheduler benchmark's mixed workload, then 10,000 more
jobs are submitted and the leader runs full cycles (as its periodic tick does); before each cycle after the first,
3 % of the running jobs finish, so every cycle places some of the queue, as on a busy cluster.

Baseline in the same run: the same scenario with the earlier rule for pending reasons (rewrite a job whenever the
text of its reason changed, and its queue position is in that text), against the current rule (rewrite when its
words change or one of its numbers, such as the queue position, moves by more than a quarter).

    python bench/leader.py [--quick] [--nodes N] [--pending N] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scheduler import fill_jobs, fleet, mixed_jobs
from gpufleet.common.clock import FakeClock
from gpufleet.coordinator.config import AgentsConfig, SchedulingConfig
from gpufleet.coordinator.leadership import LeaderElector
from gpufleet.coordinator.scheduler import ClusterState, Plan, Scheduler
from gpufleet.coordinator.state import job_rules
from gpufleet.coordinator.state.fleet import FleetView, copy_job
from gpufleet.coordinator.state.scheduling import SchedulingLoop
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.coordinator.store.base import Compare, Put
from gpufleet.coordinator.store.embedded import EmbeddedStore
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

CHUNK = 48


def _text_changed(job: pb.Job, why: str) -> bool:
    """The earlier rule: any change of the reason's text is written."""
    return not (job.reason == job_rules.UNSCHEDULABLE and job.message == why)


@contextmanager
def _rule(name: str) -> Iterator[None]:
    current = job_rules.unplaced_changed
    if name == "text":
        job_rules.unplaced_changed = _text_changed
    try:
        yield
    finally:
        job_rules.unplaced_changed = current


class _CountingView(FleetView):
    """The fleet view, counting the job records it commits."""

    written = 0

    async def commit(
        self,
        jobs: Sequence[pb.Job] = (),
        nodes: Sequence[pb.Node] = (),
        *,
        puts: Sequence[Put] = (),
        compares: Sequence[Compare] = (),
    ) -> bool:
        self.written += len(jobs)
        return await super().commit(jobs, nodes, puts=puts, compares=compares)


class _TimedScheduler(Scheduler):
    """The scheduler, adding up the CPU time of its cycles."""

    spent_s = 0.0

    def schedule(
        self, state: ClusterState, pending: Sequence[pb.Job], now_ms: int, running: Sequence[pb.Job] = ()
    ) -> Plan:
        t0 = time.process_time()
        try:
            return super().schedule(state, pending, now_ms, running)
        finally:
            self.spent_s += time.process_time() - t0


async def _submit(view: FleetView, jobs: list[pb.Job], now_ms: int) -> None:
    records = [
        job_rules.new_job(j.id, j.spec, request_id="", priority_value=j.priority_value, now_ms=now_ms) for j in jobs
    ]
    for i in range(0, len(records), CHUNK):
        assert await view.commit(jobs=records[i : i + CHUNK])


async def _finish(view: FleetView, rng: random.Random, share: float, now_ms: int) -> None:
    """A random ``share`` of the active jobs exit with code 0 (as their agents would report)."""
    active = [j for j in view.jobs.values() if j.state in (pb.JOB_STATE_SCHEDULED, pb.JOB_STATE_RUNNING)]
    done = []
    for job in rng.sample(active, int(len(active) * share)):
        j = copy_job(job)
        node = j.assignments[0].node
        job_rules.mark_running(j, node=node, now_ms=now_ms)
        job_rules.record_exit(j, apb.LocalJob(job_id=j.id, state=apb.LOCAL_JOB_STATE_EXITED), node=node, now_ms=now_ms)
        done.append(j)
    for i in range(0, len(done), CHUNK):
        assert await view.commit(jobs=done[i : i + CHUNK])


async def scenario(rule: str, n_nodes: int, n_pending: int, seed: int) -> list[tuple[int, int, int, float, float]]:
    """(pending, placed, job records written, cycle ms, of it planning ms) per cycle after the deep submit."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "store.db")
        elector = LeaderElector(store, identity="bench", address="127.0.0.1:1", ttl_s=10)
        task = asyncio.create_task(elector.run())
        try:
            while not elector.is_leader:
                await asyncio.sleep(0.01)
            clock = FakeClock()
            view = _CountingView(store, elector)
            await view.load()
            scheduler = _TimedScheduler()
            loop = SchedulingLoop(
                view, scheduler, AgentSessions(view, AgentsConfig(), clock), SchedulingConfig(), clock
            )
            view.listeners.append(loop)
            loop.start()
            nodes = fleet(n_nodes)
            for i in range(0, len(nodes), CHUNK):
                assert await view.commit(nodes=nodes[i : i + CHUNK])
            await _submit(view, fill_jobs(rng, 8 * 1000 * n_nodes), clock.now_ms())
            loop.trigger()
            await loop.cycle()
            await _submit(view, mixed_jobs(rng, n_pending, "p"), clock.now_ms())

            rows = []
            with _rule(rule):
                for k in range(6):
                    if k:
                        await _finish(view, rng, 0.03, clock.now_ms())
                    pending = sum(1 for j in view.jobs.values() if j.state == pb.JOB_STATE_PENDING)
                    view.written = 0
                    scheduler.spent_s = 0.0
                    clock.advance(2.0)
                    loop.trigger()  # a full cycle, as the periodic tick asks for
                    t0 = time.process_time()
                    plan = await loop.cycle()
                    total = time.process_time() - t0
                    placed = len(plan.placements) if plan is not None else 0
                    rows.append((pending, placed, view.written, total * 1000, scheduler.spent_s * 1000))
            return rows
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/leader.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="250 nodes, 2,500 pending")
    ap.add_argument("--nodes", type=int, default=0)
    ap.add_argument("--pending", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the elector says it stepped down when each scenario ends
    n_nodes = args.nodes or (250 if args.quick else 1000)
    n_pending = args.pending or (2500 if args.quick else 10_000)
    print(
        f"Leader cycles (plan + commit, embedded store), {n_nodes} nodes x 8 H100 ~85 % full, {n_pending:,} submitted"
    )
    print("CPU time of this process; 'written' = job records the cycle committed (placements + reasons)")
    results = {rule: asyncio.run(scenario(rule, n_nodes, n_pending, args.seed)) for rule in ("text", "quarter")}
    print(
        f"{'cycle':>5} {'pending':>8} {'placed':>7} | {'written':>8} {'ms':>7} {'plan ms':>8} (reason on any text change)"
        f" | {'written':>8} {'ms':>7} {'plan ms':>8} (now) | {'writes':>7}"
    )
    for k, (old, new) in enumerate(zip(results["text"], results["quarter"], strict=True)):
        ratio = f"{old[2] / new[2]:.0f}x" if new[2] else "-"
        print(
            f"{k + 1:>5} {new[0]:>8,} {new[1]:>7,} | {old[2]:>8,} {old[3]:>7.0f} {old[4]:>8.0f}"
            f"{'':>28} | {new[2]:>8,} {new[3]:>7.0f} {new[4]:>8.0f}{'':>6} | {ratio:>7}"
        )
    print("the first cycle writes every waiting job's first reason under both rules; later cycles show the churn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
