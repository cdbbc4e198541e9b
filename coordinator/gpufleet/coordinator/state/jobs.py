"""Job operations the API asks of the leader (submit, cancel) and job reads any replica serves from the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gpufleet.common import lifecycle as lc
from gpufleet.common.clock import Clock
from gpufleet.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    Problem,
    StoreError,
    UnavailableError,
)
from gpufleet.common.ids import new_job_id
from gpufleet.common.jobspec import PRIORITY_CLASSES, check_spec
from gpufleet.coordinator.state import job_rules, keys
from gpufleet.coordinator.state.fleet import FleetView
from gpufleet.coordinator.store.base import ClusterStore, Compare, Put
from gpufleet.proto.v1 import types_pb2 as pb

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_REQUEST_ID = 128
#: submissions committed together in one txn (2 puts + 2 compares each; etcd allows 128 ops per txn)
SUBMIT_BATCH = 40


def validate_spec(spec: pb.JobSpec) -> None:
    problems = check_spec(spec)
    if problems:
        raise InvalidInputError([Problem(f"spec.{p.field}" if p.field else "spec", p.message) for p in problems])


class JobManager:
    """Leader-side job writes. Submissions are idempotent on request_id, race-free through the store txn (the
    request key is created only if absent, in the same txn as the job), and group-committed: concurrent
    submissions share one txn."""

    def __init__(self, view: FleetView, clock: Clock) -> None:
        self.view = view
        self.clock = clock
        self._queue: list[tuple[pb.Job, asyncio.Future[tuple[pb.Job, bool]]]] = []
        self._committing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, asyncio.Future[tuple[pb.Job, bool]]] = {}

    async def submit(self, spec: pb.JobSpec, request_id: str) -> tuple[pb.Job, bool]:
        if len(request_id) > MAX_REQUEST_ID or "/" in request_id:
            raise InvalidInputError(Problem("request_id", f"at most {MAX_REQUEST_ID} characters, no '/'"))
        existing = await self._by_request(request_id)
        if existing is not None:
            return existing, False
        inflight = self._inflight.get(request_id) if request_id else None
        if inflight is not None:  # the same request is being committed right now
            job, _ = await asyncio.shield(inflight)
            return job, False
        validate_spec(spec)
        priority = PRIORITY_CLASSES.get(spec.priority or "normal", PRIORITY_CLASSES["normal"])
        job = job_rules.new_job(
            new_job_id(), spec, request_id=request_id, priority_value=priority, now_ms=self.clock.now_ms()
        )
        fut: asyncio.Future[tuple[pb.Job, bool]] = asyncio.get_running_loop().create_future()
        if request_id:
            self._inflight[request_id] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(request_id, None))
        self._queue.append((job, fut))
        if not self._committing:
            # its own task: a caller that goes away (deadline, disconnect) must not strand the others' batch
            self._committing = True
            task = asyncio.create_task(self._drain_queue(), name="submit-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    async def _drain_queue(self) -> None:
        """Group commit: one task at a time commits everything queued, a batch per txn."""
        try:
            while self._queue:
                batch, self._queue = self._queue[:SUBMIT_BATCH], self._queue[SUBMIT_BATCH:]
                try:
                    await self._commit_batch(batch)
                except (Exception, asyncio.CancelledError) as exc:  # handed to every waiting caller
                    err = exc if isinstance(exc, Exception) else UnavailableError("the coordinator is stopping")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._committing = False

    async def _commit_batch(self, batch: list[tuple[pb.Job, asyncio.Future[tuple[pb.Job, bool]]]]) -> None:
        puts: list[Put] = []
        compares: list[Compare] = []
        for job, _ in batch:
            if job.request_id:
                puts.append(Put(keys.request_key(job.request_id), job.id.encode()))
                compares.append(Compare(keys.request_key(job.request_id), "version", "==", 0))
        if await self.view.commit(jobs=[j for j, _ in batch], puts=puts, compares=compares):
            for job, fut in batch:
                if not fut.done():
                    fut.set_result((job, True))
            return
        if len(batch) > 1:  # some request id was taken meanwhile: settle each on its own
            for item in batch:
                await self._commit_batch([item])
            return
        job, fut = batch[0]
        existing = await self._by_request(job.request_id, from_store=True)
        if existing is None:
            fut.set_exception(StoreError(f"submission {job.request_id!r} conflicted but no job is recorded; retry"))
        else:
            fut.set_result((existing, False))

    async def _by_request(self, request_id: str, from_store: bool = False) -> pb.Job | None:
        if not request_id:
            return None
        job_id = self.view.requests.get(request_id)
        if job_id is None and from_store:
            kv = await self.view.store.get(keys.request_key(request_id))
            job_id = kv.value.decode() if kv is not None else None
        if job_id is None:
            return None
        job = self.view.jobs.get(job_id) or await self.view.reload_job(job_id)
        return job

    async def cancel(self, job_id: str, reason: str) -> pb.Job:
        def mutate(job: pb.Job) -> bool:
            if job.state == lc.CANCELLED:
                return False
            if job.state in lc.TERMINAL:
                raise FailedPreconditionError(
                    f"job {job_id} already finished ({lc.state_name(job.state)}); nothing to cancel"
                )
            job_rules.cancel(job, now_ms=self.clock.now_ms(), reason=reason)
            return True

        return await self.view.update_job(job_id, mutate)


class JobReader:
    """Job reads straight from the store (what followers serve; the leader's view is only for its own loops)."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store

    async def get(self, job_id: str) -> pb.Job:
        if not job_id:
            raise InvalidInputError(Problem("id", "a job id is required"))
        kv = await self.store.get(keys.job_key(job_id))
        if kv is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return keys.job_from_kv(kv)

    async def list(
        self, *, team: str, project: str, states: Sequence[int], page_size: int, page_token: str
    ) -> tuple[list[pb.Job], str]:
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidInputError(Problem("page_size", f"must be between 0 and {MAX_PAGE} (0 = {DEFAULT_PAGE})"))
        size = page_size or DEFAULT_PAGE
        kvs, _ = await self.store.range(keys.JOBS)
        wanted = set(states)
        out: list[pb.Job] = []
        for kv in kvs:
            if page_token and kv.key <= keys.job_key(page_token):
                continue
            job = keys.job_from_kv(kv)
            if team and job.spec.team != team:
                continue
            if project and job.spec.project != project:
                continue
            if wanted and job.state not in wanted:
                continue
            if len(out) == size:
                return out, out[-1].id
            out.append(job)
        return out, ""
