"""The one etcd client of the process: a shared ``aetcd.Client``, endpoint failover, and error mapping.

* Every ``EtcdStore`` on the same endpoints (in the same event loop) shares one ``EtcdConnection`` and so one
  ``aetcd.Client`` / gRPC channel (reference-counted; the last ``release`` closes it).
* The client talks to one endpoint at a time. When a call finds it unreachable, ``rotate`` closes that client
  and opens one on the next endpoint (watches on the old one fail and resume on the new one).
* ``map_error`` is the one table from aetcd / gRPC errors to the ``StoreError`` tree; nothing above this module
  sees a vendor exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import grpc

from gpufleet.common.errors import StoreError, StoreUnavailableError

from .base import CompactedError, LeaseExpiredError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: gRPC channel options: reconnect quickly after an etcd restart, notice a hung server, allow big ranges.
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    "grpc.max_send_message_length": 16 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,  # etcd refuses pings more often than every 5 s
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
}

#: connection-level failures: the request may not have been sent; try the next endpoint
_UNREACHABLE = (aetcd.ConnectionFailedError,)
#: the request may or may not have been applied: retry only idempotent calls
_AMBIGUOUS = (aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError, TimeoutError)
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}


def _rpc_code(e: BaseException) -> grpc.StatusCode | None:
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, grpc.aio.AioRpcError):
            code: grpc.StatusCode = err.code()
            return code
    return None


def map_error(e: BaseException, what: str, endpoint: str, *, lease: int = 0, revision: int = 0) -> StoreError:
    """Map an aetcd / gRPC error from ``what`` (e.g. "put /gpufleet/x") to our StoreError tree."""
    if isinstance(e, StoreError):
        return e
    if isinstance(e, aetcd.RevisionCompactedError):
        return CompactedError(revision, int(e.compacted_revision))
    text = str(e) or type(e).__name__
    if "lease not found" in text:
        return LeaseExpiredError(lease, f"etcd {what}: lease {lease:x} not found or expired")
    if "compacted" in text:
        return CompactedError(revision, 0)
    if isinstance(e, _UNREACHABLE + _AMBIGUOUS) or _rpc_code(e) in _UNAVAILABLE_CODES:
        return StoreUnavailableError(f"etcd at {endpoint} did not answer {what}: {text}")
    return StoreError(f"etcd {what} failed at {endpoint}: {text}")


class EtcdConnection:
    """One aetcd client over a list of endpoints, shared by the stores of one event loop."""

    def __init__(self, endpoints: list[str], *, request_timeout_s: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("EtcdConnection needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.request_timeout_s = request_timeout_s
        self._index = 0
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()
        self.refs = 0
        self.closed = False
        self.loop = asyncio.get_running_loop()  # gRPC aio channels belong to one event loop

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def client(self) -> aetcd.Client:
        if self.closed:
            raise StoreUnavailableError(f"etcd client for {','.join(self.endpoints)} is closed")
        if self._client is None:
            host, _, port = self.endpoint.rpartition(":")
            self._client = aetcd.Client(
                host=host.strip("[]"),
                port=int(port),
                timeout=self.request_timeout_s,
                options=CHANNEL_OPTIONS,
            )
        return self._client

    async def rotate(self, failed: aetcd.Client) -> None:
        """``failed`` could not reach its endpoint: close it and move to the next endpoint (once per failure)."""
        async with self._lock:
            if self._client is not failed:
                return  # someone else already moved on
            self._client = None
            old = self.endpoint
            self._index = (self._index + 1) % len(self.endpoints)
            if len(self.endpoints) > 1:
                log.warning("etcd endpoint %s unreachable; failing over to %s", old, self.endpoint)
        await self._close_client(failed)

    async def call(
        self, what: str, fn: Callable[[aetcd.Client], Awaitable[T]], *, idempotent: bool, lease: int = 0
    ) -> T:
        """Run ``fn(client)``; on an unreachable endpoint try the next one (each endpoint once, at least twice)."""
        attempts = max(2, len(self.endpoints))
        last: BaseException | None = None
        for _ in range(attempts):
            client = self.client()
            try:
                return await fn(client)
            except _UNREACHABLE as e:
                last = e
            except _AMBIGUOUS as e:
                if not idempotent:
                    raise map_error(e, what, self.endpoint, lease=lease) from e
                last = e
            except aetcd.ClientError as e:
                if _rpc_code(e) not in _UNAVAILABLE_CODES or not idempotent:
                    raise map_error(e, what, self.endpoint, lease=lease) from e
                last = e
            except grpc.aio.AioRpcError as e:
                raise map_error(e, what, self.endpoint, lease=lease) from e
            await self.rotate(client)
        assert last is not None
        raise StoreUnavailableError(
            f"etcd did not answer {what} on any endpoint ({', '.join(self.endpoints)}): {last or type(last).__name__}"
        ) from last

    async def close(self) -> None:
        self.closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    @staticmethod
    async def _close_client(client: aetcd.Client) -> None:
        with contextlib.suppress(aetcd.ClientError, grpc.aio.AioRpcError, TimeoutError, OSError):
            async with asyncio.timeout(5):  # not wait_for: on 3.11 it can swallow a cancel
                await client.close()


_SHARED: dict[tuple[int, tuple[str, ...]], EtcdConnection] = {}


def acquire_connection(endpoints: list[str], *, request_timeout_s: float = 5.0) -> EtcdConnection:
    """The process's connection for these endpoints in the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), tuple(endpoints))
    conn = _SHARED.get(key)
    if conn is None or conn.closed or conn.loop is not loop:  # (an id can be reused by a later loop)
        conn = _SHARED[key] = EtcdConnection(endpoints, request_timeout_s=request_timeout_s)
    conn.refs += 1
    return conn


async def release_connection(conn: EtcdConnection) -> None:
    conn.refs -= 1
    if conn.refs > 0:
        return
    for key, value in list(_SHARED.items()):
        if value is conn:
            del _SHARED[key]
    await conn.close()
