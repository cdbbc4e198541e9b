"""AgentService.Connect: the agent's one stream to the leader (followers answer with a single Redirect)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gpufleet.common.errors import GpuFleetError, InvalidInputError, NotLeaderError, PermissionDeniedError, Problem
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.services.errors import abort_with
from gpufleet.coordinator.state.sessions import AgentSession
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import agent_pb2_grpc

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]
REGISTER_TIMEOUT_S = 30.0
REDIRECT_READ_TIMEOUT_S = 2.0


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    async def Connect(
        self, request_iterator: AsyncIterator[apb.AgentMessage], context: Ctx
    ) -> AsyncIterator[apb.CoordinatorMessage]:
        try:
            await self.c.require_leader()
        except NotLeaderError as exc:
            # read the Register first: closing the stream under an agent's pending write makes it see INTERNAL
            with contextlib.suppress(StopAsyncIteration, TimeoutError, grpc.RpcError):
                async with asyncio.timeout(REDIRECT_READ_TIMEOUT_S):
                    await anext(aiter(request_iterator))
            redirect = apb.Redirect(leader_address=exc.leader_address, message=str(exc))
            yield apb.CoordinatorMessage(redirect=redirect)
            return
        except GpuFleetError as exc:
            await abort_with(context, exc)
        session: AgentSession | None = None
        reader: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(REGISTER_TIMEOUT_S):
                    first = await anext(aiter(request_iterator))
            except (StopAsyncIteration, TimeoutError):
                return
            if not first.HasField("register"):
                raise InvalidInputError(Problem("register", "the first message on the stream must be Register"))
            reg = first.register
            expected = self.c.settings.agents.join_token
            if expected and not hmac.compare_digest(reg.join_token.encode(), expected.encode()):
                log.warning("refused node %r: its join token does not match", reg.inventory.name)
                raise PermissionDeniedError(
                    "this agent's join token does not match the coordinator's [agents] join_token; "
                    "give the agent --join-token (or [connection] join_token in its config)"
                )
            node = await self.c.nodes.register(reg.inventory)
            name = node.inventory.name
            session = self.c.sessions.open(name, reg.agent_id)
            info = self.c.elector.leader
            yield apb.CoordinatorMessage(
                ack=apb.RegisterAck(
                    node=name,
                    coordinator_id=self.c.identity,
                    leader_epoch=info.epoch if info is not None else 0,
                    status_interval_ms=self.c.settings.agents.status_interval_ms,
                )
            )
            await self.c.reconciler.on_register(session, reg.jobs)
            self.c.sessions.push(name)
            log.info("agent %s connected for node %s (%d jobs reported)", reg.agent_id, name, len(reg.jobs))
            reader = asyncio.create_task(self._read(session, request_iterator), name=f"agent-{name}")
            while True:
                msg = await session.outbox.get()
                if msg is None:
                    break
                yield msg
        except GpuFleetError as exc:
            await abort_with(context, exc)
        finally:
            if reader is not None:
                reader.cancel()
            if session is not None:
                self.c.sessions.closed(session)
                log.info("agent for node %s disconnected", session.node)

    async def _read(self, session: AgentSession, messages: AsyncIterator[apb.AgentMessage]) -> None:
        try:
            async for msg in messages:
                self.c.sessions.seen(session.node)
                try:
                    await self._handle(session, msg)
                except NotLeaderError:
                    raise
                except GpuFleetError as exc:
                    log.warning("node %s: could not handle %s: %s", session.node, msg.WhichOneof("body"), exc)
        except NotLeaderError:
            log.info("lost leadership while handling node %s", session.node)
        except grpc.RpcError as exc:
            log.info("stream from node %s ended: %s", session.node, exc)
        finally:
            session.close()

    async def _handle(self, session: AgentSession, msg: apb.AgentMessage) -> None:
        body = msg.WhichOneof("body")
        if body == "status":
            st = msg.status
            node = self.c.view.nodes.get(session.node)
            if node is not None:
                del node.telemetry[:]
                node.telemetry.extend(st.gpus)
                node.last_heartbeat_ms = st.at_ms or self.c.clock.now_ms()
            if st.gpu_inventory:
                await self.c.nodes.update_gpus(session.node, list(st.gpu_inventory))
            await self.c.reconciler.on_jobs(session, st.jobs, full=True)
        elif body == "event":
            await self._event(session, msg.event)
        elif body == "log_data":
            session.deliver_logs(msg.log_data)
        elif body == "command_result":
            result = msg.command_result
            if result.ok and result.gpus:
                await self.c.nodes.update_gpus(session.node, list(result.gpus))
            session.deliver_result(result)
        elif body == "register":
            await self.c.reconciler.on_register(session, msg.register.jobs)

    async def _event(self, session: AgentSession, ev: apb.AgentEvent) -> None:
        kind = ev.WhichOneof("body")
        if kind == "job_exited":
            await self.c.reconciler.on_jobs(session, [ev.job_exited.job], full=False)
        elif kind == "limit_exceeded":
            le = ev.limit_exceeded
            log.warning(
                "node %s: job %s used %d MiB on GPU %d (allowed %d MiB)",
                session.node,
                le.job_id,
                le.observed_mib,
                le.gpu_index,
                le.allowed_mib,
            )
        elif kind == "gpu_unhealthy":
            gu = ev.gpu_unhealthy
            node = self.c.view.node(session.node)
            gpus = []
            for g in node.inventory.gpus:
                g2 = type(g)()
                g2.CopyFrom(g)
                if g.index == gu.gpu_index or (gu.uuid and g.uuid == gu.uuid):
                    g2.healthy = False
                    g2.health_reason = gu.reason
                gpus.append(g2)
            await self.c.nodes.update_gpus(session.node, gpus)
        elif kind == "spot_interruption":
            si = ev.spot_interruption
            deadline_s = max(1, (si.deadline_ms - self.c.clock.now_ms()) // 1000) if si.deadline_ms else 0
            await self.c.nodes.drain(session.node, int(deadline_s), f"spot interruption ({si.kind}): {si.detail}")
            for handler in self.c.interruption_handlers:
                await handler(session.node, si)
