"""JobService: submit (leader), get/list/watch (any replica, from the store), cancel (leader), logs (leader)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gpufleet.common import lifecycle as lc
from gpufleet.common.errors import InvalidInputError, NotFoundError, Problem, UnavailableError
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.services.errors import streaming, unary
from gpufleet.coordinator.state import keys
from gpufleet.coordinator.store.base import CompactedError
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import jobs_pb2_grpc
from gpufleet.proto.v1 import types_pb2 as pb

Ctx = grpc.aio.ServicerContext[Any, Any]
LOG_CHUNK = 256 * 1024
FOLLOW_POLL_S = 0.5


def _matches(job: pb.Job, req: jpb.WatchJobsRequest) -> bool:
    return (
        (not req.job_id or job.id == req.job_id)
        and (not req.team or job.spec.team == req.team)
        and (not req.project or job.spec.project == req.project)
    )


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    @unary
    async def SubmitJob(self, request: jpb.SubmitJobRequest, _context: Ctx) -> jpb.SubmitJobResponse:
        if not request.HasField("spec"):
            raise InvalidInputError(Problem("spec", "a job spec is required"))
        await self.c.require_leader()
        job, created = await self.c.jobs.submit(request.spec, request.request_id)
        return jpb.SubmitJobResponse(job=job, created=created)

    @unary
    async def GetJob(self, request: jpb.GetJobRequest, _context: Ctx) -> pb.Job:
        return await self.c.job_reader.get(request.id)

    @unary
    async def ListJobs(self, request: jpb.ListJobsRequest, _context: Ctx) -> jpb.ListJobsResponse:
        jobs, token = await self.c.job_reader.list(
            team=request.team,
            project=request.project,
            states=list(request.states),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return jpb.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary
    async def CancelJob(self, request: jpb.CancelJobRequest, _context: Ctx) -> pb.Job:
        if not request.id:
            raise InvalidInputError(Problem("id", "a job id is required"))
        await self.c.require_leader()
        return await self.c.jobs.cancel(request.id, request.reason)

    @streaming
    async def WatchJobs(self, request: jpb.WatchJobsRequest, context: Ctx) -> AsyncIterator[pb.JobEvent]:
        if request.since_revision < 0:
            raise InvalidInputError(Problem("since_revision", "must be >= 0"))
        start = request.since_revision + 1 if request.since_revision else 0
        if not request.since_revision:
            kvs, rev = await self.c.store.range(keys.JOBS)
            for kv in kvs:
                job = keys.job_from_kv(kv)
                if _matches(job, request):
                    yield pb.JobEvent(type=pb.JobEvent.TYPE_ADDED, job=job, revision=kv.mod_revision)
            start = rev + 1
        try:
            async for ev in self.c.store.watch(keys.JOBS, start):
                if ev.type == "delete":
                    job = pb.Job(id=ev.kv.key.removeprefix(keys.JOBS), revision=ev.revision)
                    kind = pb.JobEvent.TYPE_DELETED
                else:
                    job = keys.job_from_kv(ev.kv)
                    kind = pb.JobEvent.TYPE_ADDED if ev.kv.version == 1 else pb.JobEvent.TYPE_MODIFIED
                if _matches(job, request):
                    yield pb.JobEvent(type=kind, job=job, revision=ev.revision)
        except CompactedError as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"{exc}; watch again with since_revision=0")

    @streaming
    async def GetJobLogs(self, request: jpb.GetJobLogsRequest, _context: Ctx) -> AsyncIterator[jpb.LogChunk]:
        if request.offset < 0 or request.tail_lines < 0:
            raise InvalidInputError(Problem("offset", "offset and tail_lines must be >= 0"))
        await self.c.require_leader()
        job = await self.c.job_reader.get(request.id)
        node = self._node_of(job, request.node_rank)
        offset, tail = request.offset, request.tail_lines
        finished = False
        while True:
            datas = await self.c.sessions.read_logs(node, job.id, offset=offset, max_bytes=LOG_CHUNK, tail_lines=tail)
            tail = 0
            got = 0
            for d in datas:
                if d.error and not d.data:
                    raise UnavailableError(f"node {node}: {d.error}")
                if d.data:
                    yield jpb.LogChunk(data=d.data, offset=d.offset)
                    offset = d.offset + len(d.data)
                    got += len(d.data)
            if got:
                continue  # more may be there already
            if not request.follow or finished:
                break
            job = await self.c.job_reader.get(request.id)
            if job.state in lc.TERMINAL:
                finished = True  # one more read: output written just before the exit
                continue
            await asyncio.sleep(FOLLOW_POLL_S)
        yield jpb.LogChunk(offset=offset, eof=True)

    def _node_of(self, job: pb.Job, rank: int) -> str:
        for a in job.assignments:
            if a.node_rank == rank:
                return a.node
        if job.assignments and rank == 0:
            return job.assignments[0].node
        raise NotFoundError(
            f"job {job.id} has no node with rank {rank} ({lc.state_name(job.state)}: no logs until it is placed)"
        )
