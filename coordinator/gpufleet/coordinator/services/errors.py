"""The one place where gpufleet errors become gRPC statuses (``unary`` and ``streaming`` decorators).

``GpuFleetError`` subclasses map through :data:`gpufleet.common.errors.GRPC_CODES`; ``NotLeaderError`` also sets
the ``gpufleet-leader`` trailing metadata so clients can follow it. Anything else is a bug: it is logged with its
traceback and answered INTERNAL; the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from gpufleet.common.errors import LEADER_METADATA_KEY, GpuFleetError, NotLeaderError, grpc_code_for

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    if isinstance(exc, GpuFleetError):
        if isinstance(exc, NotLeaderError):
            context.set_trailing_metadata(((LEADER_METADATA_KEY, exc.leader_address),))
        await context.abort(grpc_code_for(exc), str(exc))
    log.error("internal error in %s", type(exc).__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _is_abort(exc: BaseException) -> bool:
    """context.abort raises AbortError (an Exception); it must pass through untouched."""
    return isinstance(exc, grpc.aio.AbortError)


def unary(
    fn: Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:  # mapped to a status (BLE: re-raised or aborted), never swallowed
            if _is_abort(exc):
                raise
            await abort_with(context, exc)

    return wrapper


def streaming(
    fn: Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:  # mapped to a status (BLE: re-raised or aborted), never swallowed
            if _is_abort(exc):
                raise
            await abort_with(context, exc)

    return wrapper
