"""CoordinatorClient: the agent's end of ``AgentService.Connect`` (see docs/dev/interfaces.md section 5).

One long-lived bidirectional stream at a time. Each session: send ``Register`` (inventory + every job the
agent knows, including exited-but-unacknowledged ones), wait for ``RegisterAck`` (or a ``Redirect``), then
concurrently read coordinator messages, write queued agent messages, and send an ``AgentStatus`` every
``status_interval_ms``. When the stream breaks the agent keeps its jobs running and reconnects with backoff and
jitter (:class:`gpufleet.common.retry.RetryPolicy`) across its address list; it follows ``Redirect`` and
``FAILED_PRECONDITION`` with trailing metadata ``gpufleet-leader`` to the leader at once.

The daemon plugs in as an :class:`AgentPeer`; this module holds no job or GPU logic.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from typing import Protocol

import grpc
import grpc.aio

from gpufleet.agent.config import ConnectionSettings
from gpufleet.common.errors import LEADER_METADATA_KEY
from gpufleet.common.retry import RetryPolicy
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import agent_pb2_grpc as agrpc

log = logging.getLogger("gpufleet.agent.connection")

#: no message from the coordinator for this many status intervals (at least 30 s) means a dead connection
_SILENCE_INTERVALS = 10
_MIN_SILENCE_S = 30.0


class AgentPeer(Protocol):
    """What the client needs from the daemon."""

    def register(self) -> apb.Register: ...
    def status(self) -> apb.AgentStatus: ...
    async def on_desired(self, desired: apb.DesiredState) -> None: ...
    async def on_command(self, command: apb.Command) -> list[apb.AgentMessage]: ...
    def after_register(self) -> list[apb.AgentMessage]:
        """Messages to send right after each registration (e.g. a pending spot interruption notice)."""
        ...


class _RedirectedError(Exception):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class _StreamEndedError(Exception):
    pass


class CoordinatorClient:
    def __init__(self, addresses: Sequence[str], peer: AgentPeer, config: ConnectionSettings) -> None:
        if not addresses:
            raise ValueError("CoordinatorClient needs at least one coordinator address")
        self.addresses = list(addresses)
        self.peer = peer
        self.config = config
        self.policy = RetryPolicy(
            initial_s=config.reconnect_initial_s, multiplier=1.5, max_interval_s=config.reconnect_max_s, jitter=0.2
        )
        self.status_interval_s = config.default_status_interval_ms / 1000
        self.connected_address = ""  # set while a registered session is up
        self.sessions = 0  # registered sessions so far
        self.last_ack: apb.RegisterAck | None = None
        self._queue: asyncio.Queue[apb.AgentMessage] | None = None
        self._seq = itertools.count(1)

    @property
    def connected(self) -> bool:
        return bool(self.connected_address)

    def send(self, message: apb.AgentMessage) -> bool:
        """Queue a message for the current session; False (dropped) when not connected. Job exits are never
        lost this way: unacknowledged exits are re-sent in every Register and AgentStatus."""
        if self._queue is None or not self.connected:
            return False
        self._queue.put_nowait(message)
        return True

    def send_event(self, event: apb.AgentEvent) -> bool:
        return self.send(apb.AgentMessage(event=event))

    # ------------------------------------------------------------------ connection loop

    async def run(self) -> None:
        """Connect, serve, reconnect: forever, until cancelled."""
        delays = self.policy.delays()
        index = 0
        target = ""  # a leader address learned from a redirect
        redirects = 0
        while True:
            address = target or self.addresses[index % len(self.addresses)]
            try:
                await self._session(address)
                reason = "the coordinator closed the stream"
            except _RedirectedError as r:
                redirects += 1
                if r.address and r.address != address and redirects <= 2 * len(self.addresses) + 2:
                    log.info("coordinator %s redirects to the leader at %s", address, r.address)
                    target = r.address
                    continue
                reason = f"redirected to {r.address or 'an unknown leader'}"
            except grpc.aio.AioRpcError as e:
                leader = _leader_hint(e)
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and leader and leader != address:
                    redirects += 1
                    if redirects <= 2 * len(self.addresses) + 2:
                        log.info("coordinator %s is not the leader; leader is at %s", address, leader)
                        target = leader
                        continue
                reason = f"{e.code().name}: {e.details()}"
            except (_StreamEndedError, TimeoutError, OSError, grpc.RpcError, asyncio.InvalidStateError) as e:
                reason = str(e) or type(e).__name__
            finally:
                was_connected = self.connected
                self.connected_address = ""
                self._queue = None
            if was_connected:
                delays = self.policy.delays()  # a session that registered resets the backoff
                redirects = 0
            target = ""
            index += 1
            delay = next(delays)
            log.warning("connection to coordinator %s lost (%s); retrying in %.2fs", address, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, address: str) -> None:
        timeout = self.config.rpc_timeout_s
        async with grpc.aio.insecure_channel(address) as channel:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                await channel.channel_ready()
            stub = agrpc.AgentServiceStub(channel)
            call = stub.Connect()
            try:
                await call.write(self._wrap(apb.AgentMessage(register=self.peer.register())))
                async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                    first = await call.read()
                if first is grpc.aio.EOF:
                    raise _StreamEndedError(f"{address} closed the stream before acknowledging Register")
                assert isinstance(first, apb.CoordinatorMessage)
                kind = first.WhichOneof("body")
                if kind == "redirect":
                    raise _RedirectedError(first.redirect.leader_address)
                queue: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
                self._queue = queue
                for m in self.peer.after_register():
                    queue.put_nowait(m)
                self.connected_address = address
                self.sessions += 1
                log.info("registered with coordinator %s", address)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._writer(call, queue), name="agent-stream-writer")
                        tg.create_task(self._status_loop(), name="agent-status")
                        await self._handle(first, tg)
                        await self._reader(call, address, tg)
                        raise _StreamEndedError(f"{address} ended the stream")
                except BaseExceptionGroup as group:
                    raise _leaf(group) from None
            finally:
                call.cancel()

    async def _reader(
        self,
        call: grpc.aio.StreamStreamCall[apb.AgentMessage, apb.CoordinatorMessage],
        address: str,
        tg: asyncio.TaskGroup,
    ) -> None:
        while True:
            silence = max(_MIN_SILENCE_S, _SILENCE_INTERVALS * self.status_interval_s)
            try:
                async with asyncio.timeout(silence):  # not wait_for: on 3.11 it can swallow a cancel
                    msg = await call.read()
            except TimeoutError:
                raise _StreamEndedError(f"no message from {address} for {silence:.0f}s") from None
            if msg is grpc.aio.EOF:
                return  # OK status; an error status is raised by read() as AioRpcError
            assert isinstance(msg, apb.CoordinatorMessage)
            await self._handle(msg, tg)

    async def _handle(self, msg: apb.CoordinatorMessage, tg: asyncio.TaskGroup) -> None:
        kind = msg.WhichOneof("body")
        if kind == "ack":
            self.last_ack = msg.ack
            if msg.ack.status_interval_ms > 0:
                self.status_interval_s = msg.ack.status_interval_ms / 1000
        elif kind == "desired":
            await self.peer.on_desired(msg.desired)
        elif kind == "command":
            tg.create_task(self._command(msg.command), name=f"command-{msg.command.command_id}")
        elif kind == "redirect":
            raise _RedirectedError(msg.redirect.leader_address)

    async def _command(self, command: apb.Command) -> None:
        for reply in await self.peer.on_command(command):
            self.send(reply)

    async def _writer(
        self,
        call: grpc.aio.StreamStreamCall[apb.AgentMessage, apb.CoordinatorMessage],
        queue: asyncio.Queue[apb.AgentMessage],
    ) -> None:
        while True:
            msg = await queue.get()
            await call.write(self._wrap(msg))

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_s)
            self.send(apb.AgentMessage(status=self.peer.status()))

    def _wrap(self, msg: apb.AgentMessage) -> apb.AgentMessage:
        msg.seq = next(self._seq)
        return msg


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a TaskGroup's exception group (errors are wrapped even when raised inline)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _leaf(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _leader_hint(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""
