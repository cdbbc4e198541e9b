"""Cost accounting from job run intervals: GPU share x time x price per GPU-hour; budgets per team.

A job's run intervals come from its history (entering RUNNING until the next transition, or ``now``). Its GPU
share is the sum of ``gpu_milli`` over its current assignments, or, once those are gone (requeued), what its spec
asks for (a MIG slice counts as its compute fraction of the GPU). The price is the node's
``gpufleet.io/price-per-gpu-hour-micros`` label when set, else ``cost.default_price_micros_per_gpu_hour``.
Finished jobs removed after their retention (``state/retention.py``) live on as ``pb.CostDay`` records: what they
cost per UTC day, team and project; reports and budgets add a day's record when the day starts in the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gpufleet.common import lifecycle as lc
from gpufleet.common import node_labels
from gpufleet.common.clock import Clock
from gpufleet.common.errors import InvalidInputError, Problem, StoreError
from gpufleet.common.gpu_models import MIG_COMPUTE_SLICES, all_mig_profile_names
from gpufleet.coordinator.config import CostConfig
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.store.base import ClusterStore
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import types_pb2 as pb

PRICE_LABEL = node_labels.PRICE
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def run_intervals(job: pb.Job, now_ms: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = 0
    for t in job.history:
        if t.to_state == lc.RUNNING:
            start = t.at_ms
        elif start and t.from_state == lc.RUNNING:
            out.append((start, t.at_ms))
            start = 0
    if start:
        out.append((start, now_ms))
    return out


def gpu_milli(job: pb.Job) -> int:
    if job.assignments:
        total = sum(d.gpu_milli for a in job.assignments for d in a.devices)
        if total:
            return total
    res = job.spec.resources
    nodes = max(1, job.spec.nodes)
    if res.gpu_milli:
        return int(res.gpu_milli) * nodes
    if res.mig_profile and res.mig_profile in all_mig_profile_names():
        compute = int(res.mig_profile.split("g.", 1)[0]) if "g." in res.mig_profile else 1
        return nodes * 1000 * compute // MIG_COMPUTE_SLICES
    return 0


@dataclass(slots=True)
class _Row:
    milli_ms: int = 0
    micros: int = 0
    jobs: int = 0


def _group_key(group_by: int, team: str, project: str, job_key: str) -> str:
    if group_by == cpb.COST_GROUP_BY_JOB:
        return job_key
    if group_by == cpb.COST_GROUP_BY_PROJECT:
        return f"{team}/{project}"
    return team


def _add(rows: dict[str, _Row], key: str, milli_s: int, micros: int, jobs: int) -> None:
    row = rows.setdefault(key, _Row())
    row.milli_ms += milli_s
    row.micros += micros
    row.jobs += jobs


class CostAccountant:
    def __init__(self, store: ClusterStore, config: CostConfig, clock: Clock) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.exhausted: set[str] = set()

    def price(self, job: pb.Job, nodes: dict[str, pb.Node]) -> int:
        for a in job.assignments:
            node = nodes.get(a.node)
            if node is not None:
                price = node_labels.price_micros(node.inventory.labels)
                if price is not None and price >= 0:
                    return price
                break
        return self.config.default_price_micros_per_gpu_hour

    def job_cost(self, job: pb.Job, nodes: dict[str, pb.Node], start_ms: int, end_ms: int) -> tuple[int, int]:
        """(gpu milli-seconds, cost micros) of ``job`` inside [start_ms, end_ms)."""
        ms = sum(max(0, min(b, end_ms) - max(a, start_ms)) for a, b in run_intervals(job, end_ms))
        milli_ms = gpu_milli(job) * ms
        return milli_ms // 1000, milli_ms * self.price(job, nodes) // (1000 * HOUR_MS)

    def day_costs(self, job: pb.Job, nodes: dict[str, pb.Node], now_ms: int) -> dict[int, tuple[int, int]]:
        """(gpu milli-seconds, cost micros) of ``job`` per UTC day it ran (day start in Unix ms)."""
        days: set[int] = set()
        for a, b in run_intervals(job, now_ms):
            days.update(range(a - a % DAY_MS, b, DAY_MS))
        out: dict[int, tuple[int, int]] = {}
        for day in sorted(days):
            milli_s, micros = self.job_cost(job, nodes, day, day + DAY_MS)
            if milli_s or micros:
                out[day] = (milli_s, micros)
        return out

    async def _records(self) -> tuple[list[pb.Job], dict[str, pb.Node]]:
        job_kvs, _ = await self.store.range(keys.JOBS)
        node_kvs, _ = await self.store.range(keys.NODES)
        nodes = {n.inventory.name: n for n in (keys.node_from_kv(kv) for kv in node_kvs)}
        return [keys.job_from_kv(kv) for kv in job_kvs], nodes

    async def _days(self, start_ms: int, end_ms: int) -> list[cpb.CostDay]:
        """Cost records of removed jobs for the days starting in [start_ms, end_ms)."""
        kvs, _ = await self.store.range(keys.COSTS)
        days = [cpb.CostDay.FromString(kv.value) for kv in kvs]
        return [d for d in days if start_ms <= d.day_start_ms < end_ms]

    async def report(self, start_ms: int, end_ms: int, group_by: int, team: str) -> cpb.CostReport:
        end = end_ms or self.clock.now_ms()
        start = start_ms or end - DAY_MS
        if start >= end:
            raise InvalidInputError(Problem("start_ms", "must be before end_ms"))
        jobs, nodes = await self._records()
        rows: dict[str, _Row] = {}
        for job in jobs:
            if team and job.spec.team != team:
                continue
            milli_s, micros = self.job_cost(job, nodes, start, end)
            if not milli_s:
                continue
            _add(rows, _group_key(group_by, job.spec.team, job.spec.project, job.id), milli_s, micros, 1)
        for day in await self._days(start, end):
            for gone in day.rows:
                if not team or gone.team == team:
                    key = _group_key(group_by, gone.team, gone.project, f"{gone.team}/{gone.project} (removed jobs)")
                    _add(rows, key, gone.gpu_milli_seconds, gone.cost_micros, gone.jobs)
        out = cpb.CostReport(start_ms=start, end_ms=end)
        for key in sorted(rows, key=lambda k: -rows[k].micros):
            r = rows[key]
            out.rows.append(cpb.CostRow(key=key, gpu_milli_seconds=r.milli_ms, cost_micros=r.micros, jobs=r.jobs))
            out.total_cost_micros += r.micros
        return out

    async def set_budget(self, budget: cpb.Budget) -> None:
        if not budget.team:
            raise InvalidInputError(Problem("budget.team", "a team name is required"))
        if budget.limit_micros < 0:
            raise InvalidInputError(Problem("budget.limit_micros", "must be >= 0"))
        if budget.period_s <= 0:
            raise InvalidInputError(Problem("budget.period_s", "must be > 0 seconds, e.g. 2592000 for 30 days"))

    async def budgets(self, stored: Iterable[cpb.Budget]) -> list[cpb.Budget]:
        """Fill ``spent_micros`` of each budget: its team's cost over the last period."""
        jobs, nodes = await self._records()
        now = self.clock.now_ms()
        out = []
        days = await self._days(0, now + 1)
        for b in stored:
            start = now - b.period_s * 1000
            spent = sum(self.job_cost(j, nodes, start, now)[1] for j in jobs if j.spec.team == b.team)
            spent += sum(r.cost_micros for d in days if d.day_start_ms >= start for r in d.rows if r.team == b.team)
            filled = cpb.Budget(team=b.team, limit_micros=b.limit_micros, period_s=b.period_s, spent_micros=spent)
            out.append(filled)
        return out

    async def stored_budgets(self) -> list[cpb.Budget]:
        kvs, _ = await self.store.range(keys.BUDGETS)
        return [cpb.Budget.FromString(kv.value) for kv in kvs]

    async def refresh(self) -> None:
        try:
            budgets = await self.budgets(await self.stored_budgets())
        except StoreError:
            return
        self.exhausted = {b.team for b in budgets if b.limit_micros and b.spent_micros >= b.limit_micros}

    def budget_exhausted(self, team: str) -> bool:
        """Scheduler hook: True holds the team's new work until its spending falls under its budget."""
        return team in self.exhausted
