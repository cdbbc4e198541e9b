"""``EtcdStore``: the production ``ClusterStore`` on an etcd v3 cluster, through ``aetcd`` (see store/base.py).

* One ``aetcd.Client`` per process and endpoint list (``etcd_client.EtcdConnection``), with failover to the next
  endpoint when one is down. Reads are retried on the next endpoint after any connection failure; writes only
  when the request cannot have reached the server (a timed-out write raises ``StoreUnavailableError``: the
  caller re-reads, as after any lost race).
* ``watch`` is our own resume loop over aetcd's watch: after a dropped stream or an etcd restart it reconnects
  (backoff 0.1 s .. 2 s, forever) and watches again from the last delivered revision + 1, so no event is lost or
  repeated; a compacted revision raises ``CompactedError``.
* Lease keep-alive is not automatic: call ``refresh_lease`` (``leases.LeaseKeeper`` does it in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import aetcd
from aetcd import rpc

from gpufleet.common.errors import StoreError, StoreUnavailableError
from gpufleet.common.retry import RetryPolicy

from .base import CompactedError, Compare, Delete, KeyValue, LeaseExpiredError, Put, TxnResult, WatchEvent, prefix_end
from .etcd_client import EtcdConnection, acquire_connection, map_error, release_connection

log = logging.getLogger(__name__)

_TARGETS = {
    "value": rpc.Compare.VALUE,
    "version": rpc.Compare.VERSION,
    "create": rpc.Compare.CREATE,
    "mod": rpc.Compare.MOD,
}
_OPS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}
#: how a watch reconnects after losing its stream
WATCH_RETRY = RetryPolicy(initial_s=0.1, multiplier=2.0, max_interval_s=2.0, jitter=0.2)


def _range_of(key: str, prefix: bool) -> tuple[bytes, bytes | None]:
    k = key.encode()
    if not prefix:
        return k, None
    if not k:
        return b"\0", b"\0"  # everything
    return k, prefix_end(k)


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        bytes(kv.key).decode(),
        bytes(kv.value),
        int(kv.create_revision),
        int(kv.mod_revision),
        int(kv.version),
        int(kv.lease),
    )


def _compare_msg(c: Compare) -> Any:
    msg = rpc.Compare(key=c.key.encode(), target=_TARGETS[c.target], result=_OPS[c.op])
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise TypeError(f"Compare(target='value') on {c.key!r} needs bytes, got {type(c.value).__name__}")
        msg.value = c.value
    elif isinstance(c.value, bytes):
        raise TypeError(f"Compare(target={c.target!r}) on {c.key!r} needs an int, got bytes")
    elif c.target == "version":
        msg.version = c.value
    elif c.target == "create":
        msg.create_revision = c.value
    else:
        msg.mod_revision = c.value
    return msg


def _op_msg(op: Put | Delete) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease))
    start, end = _range_of(op.key, op.prefix)
    req = rpc.DeleteRangeRequest(key=start)
    if end is not None:
        req.range_end = end
    return rpc.RequestOp(request_delete_range=req)


def _first_lease(ops: Sequence[Put | Delete]) -> int:
    return next((op.lease for op in ops if isinstance(op, Put) and op.lease), 0)


class EtcdStore:
    """A ``ClusterStore`` on etcd v3 (``etcd://h1:2379,h2:2379``)."""

    kind = "etcd"

    def __init__(self, endpoints: list[str], *, request_timeout_s: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._request_timeout_s = request_timeout_s
        self._conn: EtcdConnection | None = None
        self._closed = False

    @property
    def conn(self) -> EtcdConnection:
        if self._closed:
            raise StoreUnavailableError(f"etcd store {','.join(self.endpoints)} is closed")
        if self._conn is None:
            self._conn = acquire_connection(self.endpoints, request_timeout_s=self._request_timeout_s)
        return self._conn

    # -- key/value ---------------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        async def do(c: aetcd.Client) -> KeyValue | None:
            got = await c.get(key.encode())
            return None if got is None else _kv(got)

        return await self.conn.call(f"get {key}", do, idempotent=True)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        start, end = _range_of(prefix, True)

        async def do(c: aetcd.Client) -> tuple[list[KeyValue], int]:
            got = await c.get_range(start, end, sort_order="ascend", sort_target="key")
            return [_kv(kv) for kv in got.kvs], int(got.header.revision)

        return await self.conn.call(f"range {prefix}", do, idempotent=True)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        async def do(c: aetcd.Client) -> int:
            return int((await c.put(key.encode(), value, lease=lease or None)).header.revision)

        return await self.conn.call(f"put {key}", do, idempotent=False, lease=lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        start, end = _range_of(key, prefix)

        async def do(c: aetcd.Client) -> int:
            if end is None:
                got = await c.delete(start)
                return 0 if got is None else int(got.deleted)
            return int((await c.delete_range(start, end)).deleted)

        return await self.conn.call(f"delete {key}", do, idempotent=False)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[_compare_msg(c) for c in compares],
            success=[_op_msg(op) for op in success],
            failure=[_op_msg(op) for op in failure],
        )

        async def do(c: aetcd.Client) -> TxnResult:
            await c.connect()
            resp = await c.kvstub.Txn(request, timeout=self._request_timeout_s, metadata=c.metadata)
            return TxnResult(bool(resp.succeeded), int(resp.header.revision))

        what = f"txn on {compares[0].key if compares else (success or failure or [Put('-', b'')])[0].key}"
        return await self.conn.call(what, do, idempotent=False, lease=_first_lease([*success, *failure]))

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watching from an older revision then raises CompactedError)."""

        async def do(c: aetcd.Client) -> None:
            await c.compact(revision, physical=True)

        await self.conn.call(f"compact {revision}", do, idempotent=True)

    async def current_revision(self) -> int:
        async def do(c: aetcd.Client) -> int:
            await c.connect()
            resp = await c.kvstub.Range(
                rpc.RangeRequest(key=b"\0", count_only=True), timeout=self._request_timeout_s, metadata=c.metadata
            )
            return int(resp.header.revision)

        return await self.conn.call("read revision", do, idempotent=True)

    # -- watch -------------------------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        start, end = _range_of(prefix, True)
        delays = WATCH_RETRY.delays()
        next_rev = start_revision
        while True:
            conn = self.conn
            client = conn.client()
            watch = None
            try:
                if next_rev <= 0:
                    next_rev = await self.current_revision() + 1
                    client = conn.client()
                watch = await client.watch(start, range_end=end, start_revision=next_rev)
                async for ev in watch:
                    delays = WATCH_RETRY.delays()  # healthy again
                    out = _event(ev)
                    next_rev = out.revision + 1
                    yield out
                raise StoreUnavailableError(f"etcd watch on {prefix} ended")  # cancelled under us: resume
            except aetcd.RevisionCompactedError as e:
                raise CompactedError(next_rev, int(e.compacted_revision)) from e
            except (aetcd.ClientError, StoreError, TimeoutError) as e:
                err = map_error(e, f"watch {prefix}", conn.endpoint, revision=next_rev)
                if isinstance(err, CompactedError) or not isinstance(err, StoreUnavailableError):
                    raise err from e
                if self._closed:
                    return
                delay = next(delays)
                log.info("etcd watch on %s lost (%s); resuming from revision %d in %.1fs", prefix, err, next_rev, delay)
                await _cancel(watch)
                watch = None
                await conn.rotate(client)
                await asyncio.sleep(delay)
            finally:
                await _cancel(watch)

    # -- leases ------------------------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> int:
        async def do(c: aetcd.Client) -> int:
            return int((await c.lease(int(ttl_s))).id)

        return await self.conn.call(f"grant lease ttl={ttl_s}", do, idempotent=True)

    async def refresh_lease(self, lease: int) -> int:
        async def do(c: aetcd.Client) -> int:
            reply = await c.refresh_lease(lease)
            return 0 if reply is None else int(reply.TTL)

        ttl = await self.conn.call(f"refresh lease {lease:x}", do, idempotent=True, lease=lease)
        if ttl <= 0:
            raise LeaseExpiredError(lease)
        return ttl

    async def revoke_lease(self, lease: int) -> None:
        async def do(c: aetcd.Client) -> None:
            await c.revoke_lease(lease)

        with contextlib.suppress(LeaseExpiredError):  # already gone: nothing to do
            await self.conn.call(f"revoke lease {lease:x}", do, idempotent=True, lease=lease)

    # -- status / close ----------------------------------------------------------------------------------------

    async def status(self) -> tuple[bool, int, str]:
        try:
            async with asyncio.timeout(self._request_timeout_s + 1):  # not wait_for: on 3.11 it can swallow a cancel
                rev = await self.current_revision()
        except (StoreError, TimeoutError) as e:
            return False, 0, f"etcd {','.join(self.endpoints)} unreachable: {e}"
        return True, rev, f"etcd {self.conn.endpoint} (of {','.join(self.endpoints)})"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await release_connection(conn)


async def _cancel(watch: Any) -> None:
    """Stop an aetcd watch; a watch whose client was closed already is gone (aetcd then lacks its watcher)."""
    if watch is not None:
        with contextlib.suppress(aetcd.ClientError, TimeoutError, AttributeError):
            async with asyncio.timeout(1):  # not wait_for: on 3.11 it can swallow a cancel
                await watch.cancel()


def _event(ev: Any) -> WatchEvent:
    kind: Literal["put", "delete"] = "put" if ev.kind == "PUT" else "delete"
    kv = _kv(ev.kv)
    return WatchEvent(kind, kv, kv.mod_revision)
