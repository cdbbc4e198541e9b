"""Removing finished jobs after their retention period, keeping what they cost.

Every ``jobs.gc_interval_s`` the leader takes the finished jobs (succeeded, failed, cancelled) that ended more
than ``jobs.retention_s`` ago, adds their cost per UTC day, team and project into the ``/gpufleet/costs/<day>``
records (``pb.CostDay``) and deletes the jobs and their submit-idempotency keys: one fenced txn per batch,
conditioned on each job's and each day record's revision, so a lost race or a new leader only means the batch is
tried again on the next round. Cost reports and budgets add the day records, so removing a job does not change
what a team has spent; the job itself (spec, history, logs) is gone: ``gpufleet job get`` answers NOT_FOUND and a
submit with its old request id creates a new job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import StoreError
from gpufleet.coordinator.config import JobsConfig
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.state.costs import CostAccountant
from gpufleet.coordinator.state.fleet import FleetView
from gpufleet.coordinator.store.base import Compare, Delete, Put
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


def ended_ms(job: pb.Job) -> int:
    """When a finished job ended: its last transition into a terminal state (else its last update)."""
    for t in reversed(job.history):
        if t.to_state in lc.TERMINAL:
            return int(t.at_ms)
    return int(job.updated_ms)


def _chunks(jobs: list[pb.Job], size: int) -> Iterator[list[pb.Job]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


class JobRetention:
    def __init__(self, view: FleetView, costs: CostAccountant, config: JobsConfig, clock: Clock, chunk: int) -> None:
        self.view = view
        self.costs = costs
        self.config = config
        self.clock = clock
        self.chunk = chunk
        self.removed = 0  # jobs removed by this replica (for logs and tests)

    async def run(self) -> None:
        if self.config.retention_s <= 0:
            return  # keep finished jobs forever
        while True:
            try:
                n = await self.collect_once()
                if n:
                    log.info("removed %d finished jobs past their %.0fs retention", n, self.config.retention_s)
            except StoreError as exc:
                log.warning("could not remove expired jobs this round: %s", exc)
            await asyncio.sleep(self.config.gc_interval_s)

    def expired(self, now_ms: int) -> list[pb.Job]:
        cutoff = now_ms - int(self.config.retention_s * 1000)
        done = [j for j in self.view.jobs.values() if j.state in lc.TERMINAL and ended_ms(j) < cutoff]
        return sorted(done, key=ended_ms)

    async def collect_once(self) -> int:
        """Remove the expired jobs; returns how many were removed."""
        now = self.clock.now_ms()
        removed = 0
        for batch in _chunks(self.expired(now), self.chunk):
            if not await self._remove(batch, now):
                break  # a record moved under us: the next round re-reads it
            removed += len(batch)
        self.removed += removed
        return removed

    async def _remove(self, batch: list[pb.Job], now_ms: int) -> bool:
        per_day: dict[int, dict[tuple[str, str], cpb.CostRollup]] = {}
        for job in batch:
            for day, (milli_s, micros) in self.costs.day_costs(job, self.view.nodes, now_ms).items():
                rows = per_day.setdefault(day, {})
                group = (job.spec.team, job.spec.project)
                row = rows.get(group)
                if row is None:
                    row = rows[group] = cpb.CostRollup(team=group[0], project=group[1])
                row.gpu_milli_seconds += milli_s
                row.cost_micros += micros
                row.jobs += 1
        ops: list[Put | Delete] = []
        compares: list[Compare] = []
        for day, rows in sorted(per_day.items()):
            key = keys.cost_day_key(day)
            kv = await self.view.store.get(key)
            record = cpb.CostDay.FromString(kv.value) if kv is not None else cpb.CostDay(day_start_ms=day)
            compares.append(Compare(key, "mod", "==", kv.mod_revision) if kv else Compare(key, "version", "==", 0))
            existing = {(r.team, r.project): r for r in record.rows}
            for (team, project), add in rows.items():
                row = existing.get((team, project))
                if row is None:
                    record.rows.append(add)
                else:
                    row.gpu_milli_seconds += add.gpu_milli_seconds
                    row.cost_micros += add.cost_micros
                    row.jobs += add.jobs
            ops.append(Put(key, record.SerializeToString(deterministic=True)))
        for job in batch:
            compares.append(Compare(keys.job_key(job.id), "mod", "==", job.revision))
            ops.append(Delete(keys.job_key(job.id)))
            if job.request_id:
                ops.append(Delete(keys.request_key(job.request_id)))
        result = await self.view.fencer.leader_txn(ops, compares)
        if not result.succeeded:
            for job in batch:
                await self.view.reload_job(job.id)
            return False
        self.view.forget_jobs([j.id for j in batch])
        return True
