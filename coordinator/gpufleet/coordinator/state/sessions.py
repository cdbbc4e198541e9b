"""Agent sessions on the leader: one per connected node, the desired-state pusher, and request/response
commands (log reads, MIG layouts) carried over the agent's stream.

Desired state is level-triggered: every push carries the full set of jobs that must run on the node, computed
from the leader's fleet view, plus the exits already recorded. Pushes happen right after any change that touches
a node (the view tells us) and at least every ``resync_interval_s``. Heartbeats and telemetry stay here, in
memory; they are never written to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid

from gpufleet.common.clock import Clock
from gpufleet.common.errors import UnavailableError
from gpufleet.coordinator.config import AgentsConfig
from gpufleet.coordinator.state.fleet import FleetView, job_nodes
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class AgentSession:
    """One connected agent: an outbox the stream handler drains, and pending command replies."""

    def __init__(self, node: str, agent_id: str) -> None:
        self.node = node
        self.agent_id = agent_id
        self.outbox: asyncio.Queue[apb.CoordinatorMessage | None] = asyncio.Queue()
        self.acked_exits: set[str] = set()
        self.generation = 0
        self.closed = False
        self.logs: dict[str, asyncio.Queue[apb.LogData]] = {}
        self.commands: dict[str, asyncio.Future[apb.CommandResult]] = {}

    def send(self, msg: apb.CoordinatorMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbox.put_nowait(None)
        for fut in self.commands.values():
            if not fut.done():
                fut.set_exception(UnavailableError(f"agent on {self.node} disconnected"))
        for q in self.logs.values():
            q.put_nowait(apb.LogData(eof=True, error=f"agent on {self.node} disconnected"))

    def deliver_logs(self, data: apb.LogData) -> None:
        q = self.logs.get(data.request_id)
        if q is not None:
            q.put_nowait(data)

    def deliver_result(self, result: apb.CommandResult) -> None:
        fut = self.commands.pop(result.command_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)


class AgentSessions:
    """All sessions of this leader; also a FleetListener that marks nodes whose desired state changed."""

    def __init__(self, view: FleetView, config: AgentsConfig, clock: Clock) -> None:
        self.view = view
        self.config = config
        self.clock = clock
        self.sessions: dict[str, AgentSession] = {}
        self.last_seen_ms: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._gen = itertools.count(1)

    # ------------------------------------------------------------------ sessions

    def open(self, node: str, agent_id: str) -> AgentSession:
        old = self.sessions.get(node)
        if old is not None:
            log.info("node %s reconnected (agent %s replaces %s)", node, agent_id, old.agent_id)
            old.close()
        session = AgentSession(node, agent_id)
        self.sessions[node] = session
        self.seen(node)
        return session

    def closed(self, session: AgentSession) -> None:
        session.close()
        if self.sessions.get(session.node) is session:
            del self.sessions[session.node]
            self.seen(session.node)

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()
        self.last_seen_ms.clear()

    def drop(self, node: str) -> None:
        """Close a session whose agent went silent (the agent reconnects if it is still alive)."""
        session = self.sessions.pop(node, None)
        if session is not None:
            session.close()

    def seen(self, node: str) -> None:
        self.last_seen_ms[node] = self.clock.now_ms()

    def connected(self, node: str) -> bool:
        return node in self.sessions

    # ------------------------------------------------------------------ desired state

    def desired_state(self, node: str, acked: set[str]) -> apb.DesiredState:
        jobs = self.view.jobs_on(node)
        # never acknowledge a job id while an attempt of it must run here: the agent forgets by job id
        active = {j.id for j in jobs}
        out = apb.DesiredState(generation=next(self._gen), acknowledged_exits=sorted(acked - active))
        for job in jobs:
            for a in job.assignments:
                if a.node == node:
                    out.jobs.append(
                        apb.DesiredJob(
                            job_id=job.id,
                            attempt=job.attempt,
                            spec=job.spec,
                            assignment=a,
                            grace_period_s=self.config.grace_period_s,
                        )
                    )
        return out

    def push(self, node: str) -> None:
        session = self.sessions.get(node)
        if session is not None:
            session.send(apb.CoordinatorMessage(desired=self.desired_state(node, session.acked_exits)))

    def mark(self, node: str) -> None:
        self._dirty.add(node)
        self._wake.set()

    def job_changed(self, old: pb.Job | None, new: pb.Job) -> None:
        before = job_nodes(old) if old is not None else set()
        after = job_nodes(new)
        if before != after or (old is not None and old.attempt != new.attempt):
            for n in before | after:
                self.mark(n)

    def node_changed(self, old: pb.Node | None, new: pb.Node) -> None:
        del old, new

    async def run_pusher(self) -> None:
        """Push to dirty nodes as soon as they change, and to every node every ``resync_interval_s``."""
        next_full = self.clock.monotonic() + self.config.resync_interval_s
        while True:
            timeout = max(0.0, next_full - self.clock.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._wake.wait()
            self._wake.clear()
            if self.clock.monotonic() >= next_full:
                targets = set(self.sessions)
                next_full = self.clock.monotonic() + self.config.resync_interval_s
            else:
                targets = set(self._dirty)
            self._dirty.clear()
            for node in targets:
                self.push(node)

    # ------------------------------------------------------------------ commands

    def _session(self, node: str) -> AgentSession:
        session = self.sessions.get(node)
        if session is None:
            raise UnavailableError(f"the agent on node {node!r} is not connected to the leader")
        return session

    async def command(self, node: str, cmd: apb.Command, timeout_s: float | None = None) -> apb.CommandResult:
        session = self._session(node)
        cmd.command_id = cmd.command_id or uuid.uuid4().hex
        fut: asyncio.Future[apb.CommandResult] = asyncio.get_running_loop().create_future()
        session.commands[cmd.command_id] = fut
        session.send(apb.CoordinatorMessage(command=cmd))
        try:
            async with asyncio.timeout(timeout_s or self.config.log_timeout_s):
                return await fut
        except TimeoutError:
            raise UnavailableError(f"node {node} did not answer command {cmd.command_id} in time") from None
        finally:
            session.commands.pop(cmd.command_id, None)

    def send_command(self, node: str, cmd: apb.Command) -> str:
        """Fire a command without waiting for its result (MIG relayouts asked by the scheduler)."""
        session = self._session(node)
        cmd.command_id = cmd.command_id or uuid.uuid4().hex
        session.send(apb.CoordinatorMessage(command=cmd))
        return cmd.command_id

    async def read_logs(
        self, node: str, job_id: str, *, offset: int, max_bytes: int, tail_lines: int
    ) -> list[apb.LogData]:
        """One ReadLogs round trip: every LogData the agent sends until the one marked eof."""
        session = self._session(node)
        request_id = uuid.uuid4().hex
        q: asyncio.Queue[apb.LogData] = asyncio.Queue()
        session.logs[request_id] = q
        read = apb.ReadLogs(
            request_id=request_id, job_id=job_id, offset=offset, max_bytes=max_bytes, tail_lines=tail_lines
        )
        session.send(apb.CoordinatorMessage(command=apb.Command(command_id=request_id, read_logs=read)))
        out: list[apb.LogData] = []
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.log_timeout_s):
                        data = await q.get()
                except TimeoutError:
                    raise UnavailableError(f"node {node} did not send logs of {job_id} in time") from None
                if data.error and not data.data and data.eof and not out and "disconnected" in data.error:
                    raise UnavailableError(data.error)
                out.append(data)
                if data.eof:
                    return out
        finally:
            session.logs.pop(request_id, None)
