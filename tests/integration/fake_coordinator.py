"""A scripted AgentService peer for agent tests: a test double of the wire peer (the real coordinator is
tested end to end elsewhere). It records everything agents send, serves a DesiredState the test sets (after
every change and every ``desired_interval_s``), forwards commands, and can act as a follower (Redirect, or
FAILED_PRECONDITION with the ``gpufleet-leader`` trailing metadata)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from gpufleet.common.errors import LEADER_METADATA_KEY
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import agent_pb2_grpc as agrpc


class FakeCoordinator(agrpc.AgentServiceServicer):
    def __init__(
        self,
        *,
        redirect_to: str = "",
        not_leader_hint: str = "",
        status_interval_ms: int = 200,
        desired_interval_s: float = 0.5,
    ) -> None:
        self.redirect_to = redirect_to
        self.not_leader_hint = not_leader_hint
        self.status_interval_ms = status_interval_ms
        self.desired_interval_s = desired_interval_s
        self.desired: dict[str, apb.DesiredJob] = {}
        self.acked: set[str] = set()
        self.received: list[apb.AgentMessage] = []
        self.registers: list[apb.Register] = []
        self.connects = 0
        self._changed = asyncio.Event()
        self._commands: dict[int, asyncio.Queue[apb.Command]] = {}  # per session

    # ---------------------------------------------------------------- test controls

    def set_desired(self, *jobs: apb.DesiredJob) -> None:
        self.desired = {j.job_id: j for j in jobs}
        self._changed.set()

    def ack(self, *job_ids: str) -> None:
        self.acked.update(job_ids)
        self._changed.set()

    def send_command(self, command: apb.Command) -> None:
        """Send on the newest session (an older one may belong to an agent that was killed)."""
        self._commands.setdefault(self.connects, asyncio.Queue()).put_nowait(command)

    def statuses(self) -> list[apb.AgentStatus]:
        return [m.status for m in self.received if m.WhichOneof("body") == "status"]

    def events(self) -> list[apb.AgentEvent]:
        return [m.event for m in self.received if m.WhichOneof("body") == "event"]

    def last_job(self, job_id: str) -> apb.LocalJob | None:
        """The job as last reported (status, register or exit event)."""
        for m in reversed(self.received):
            kind = m.WhichOneof("body")
            jobs: list[apb.LocalJob] = []
            if kind == "status":
                jobs = list(m.status.jobs)
            elif kind == "register":
                jobs = list(m.register.jobs)
            elif kind == "event" and m.event.WhichOneof("body") == "job_exited":
                jobs = [m.event.job_exited.job]
            for j in jobs:
                if j.job_id == job_id:
                    return j
        return None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")

    # ---------------------------------------------------------------- the RPC

    def _desired_state(self) -> apb.CoordinatorMessage:
        return apb.CoordinatorMessage(
            desired=apb.DesiredState(jobs=list(self.desired.values()), acknowledged_exits=sorted(self.acked))
        )

    async def Connect(
        self, request_iterator: AsyncIterator[apb.AgentMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[apb.CoordinatorMessage]:
        self.connects += 1
        session = self.connects
        commands = self._commands.setdefault(session, asyncio.Queue())
        first = await anext(aiter(request_iterator))
        self.received.append(first)
        self.registers.append(first.register)
        if self.redirect_to:
            yield apb.CoordinatorMessage(redirect=apb.Redirect(leader_address=self.redirect_to, message="follower"))
            return
        if self.not_leader_hint:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, self.not_leader_hint),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")
        yield apb.CoordinatorMessage(
            ack=apb.RegisterAck(node=first.register.inventory.name, status_interval_ms=self.status_interval_ms)
        )

        async def read() -> None:
            async for msg in request_iterator:
                self.received.append(msg)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while not reader.done():
                yield self._desired_state()
                self._changed.clear()
                while not commands.empty():
                    yield apb.CoordinatorMessage(command=commands.get_nowait())
                wait_changed = asyncio.ensure_future(self._changed.wait())
                wait_command = asyncio.ensure_future(commands.get())
                done, _ = await asyncio.wait(
                    {wait_changed, wait_command, reader}, timeout=self.desired_interval_s, return_when="FIRST_COMPLETED"
                )
                del done
                wait_changed.cancel()
                if wait_command.done():
                    yield apb.CoordinatorMessage(command=wait_command.result())
                else:
                    wait_command.cancel()
        finally:
            reader.cancel()


class FakeCoordinatorServer:
    """A grpc.aio server on 127.0.0.1 serving one FakeCoordinator; restartable on the same port."""

    def __init__(self, servicer: FakeCoordinator, port: int = 0) -> None:
        self.servicer = servicer
        self.port = port
        self.server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeCoordinatorServer:
        self.server = grpc.aio.server()
        agrpc.add_AgentServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None
