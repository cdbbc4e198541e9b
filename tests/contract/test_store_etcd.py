"""EtcdStore specifics against a real etcd: watch resume across an etcd restart, endpoint failover, one shared
client per process, and errors when etcd is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpufleet.common.errors import StoreUnavailableError
from gpufleet.coordinator.store import WatchEvent, open_store
from gpufleet.coordinator.store.etcd import EtcdStore
from tests.helpers.etcd_server import EtcdServer, free_port
from tests.helpers.narrow import value_at

pytestmark = pytest.mark.timeout(60)


async def _next(it: AsyncIterator[WatchEvent], timeout: float = 15.0) -> WatchEvent:
    return await asyncio.wait_for(anext(it), timeout)


async def _put_when_back(store: EtcdStore, key: str, value: bytes, within_s: float = 15.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        try:
            return await store.put(key, value)
        except StoreUnavailableError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_watch_resumes_after_etcd_restart_without_loss_or_repeat(
    fresh_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    store = open_store(fresh_etcd_server.url, tmp_path)
    writer = EtcdStore([fresh_etcd_server.endpoint])  # a second store object: shares the process's client
    try:
        r1 = await store.put("/w/a", b"1")
        it = store.watch("/w/", start_revision=r1)
        assert (await _next(it)).kv.key == "/w/a"
        fresh_etcd_server.kill()
        pending = asyncio.ensure_future(_next(it, 30))
        await asyncio.sleep(0.5)  # the stream is now broken and the watch is retrying
        assert not pending.done()
        fresh_etcd_server.start()  # same port, same data
        r2 = await _put_when_back(writer, "/w/b", b"2")
        r3 = await writer.put("/w/c", b"3")
        got = [await pending, await _next(it)]
        assert [(e.kv.key, e.revision) for e in got] == [("/w/b", r2), ("/w/c", r3)]
        assert r2 == r1 + 1  # the data survived the restart
    finally:
        await store.close()
        await writer.close()


async def test_watch_resumes_and_replays_changes_made_while_disconnected(
    fresh_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    store = open_store(fresh_etcd_server.url, tmp_path)
    try:
        it = store.watch("/m/")
        first = asyncio.ensure_future(_next(it))
        await asyncio.sleep(0.3)
        r1 = await store.put("/m/1", b"")
        assert (await first).revision == r1
        fresh_etcd_server.stop()  # graceful this time
        fresh_etcd_server.start()
        r2 = await _put_when_back(store, "/m/2", b"")  # may land before the watch has reconnected
        r3 = await store.put("/m/3", b"")
        assert [(await _next(it)).revision, (await _next(it)).revision] == [r2, r3]
    finally:
        await store.close()


async def test_fails_over_to_the_next_endpoint(fresh_etcd_server: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore([dead, fresh_etcd_server.endpoint], request_timeout_s=2)
    try:
        rev = await store.put("/f/x", b"1")  # the first endpoint refuses; the write goes to the second
        kv = await store.get("/f/x")
        assert kv is not None and kv.mod_revision == rev
        healthy, _, message = await store.status()
        assert healthy and fresh_etcd_server.endpoint in message
    finally:
        await store.close()


async def test_down_etcd_gives_store_unavailable_and_unhealthy_status(fresh_etcd_server: EtcdServer) -> None:
    store = EtcdStore([fresh_etcd_server.endpoint], request_timeout_s=1)
    try:
        await store.put("/d/x", b"1")
        fresh_etcd_server.kill()
        with pytest.raises(StoreUnavailableError, match=fresh_etcd_server.endpoint):
            await store.get("/d/x")
        with pytest.raises(StoreUnavailableError):
            await store.put("/d/x", b"2")
        healthy, _, message = await store.status()
        assert not healthy and "unreachable" in message
        fresh_etcd_server.start()
        await _put_when_back(store, "/d/x", b"3")
        assert await value_at(store, "/d/x") == b"3"
    finally:
        await store.close()


async def test_stores_share_one_client_per_process(fresh_etcd_server: EtcdServer) -> None:
    a = EtcdStore([fresh_etcd_server.endpoint])
    b = EtcdStore([fresh_etcd_server.endpoint])
    try:
        await a.put("/s/a", b"")
        await b.put("/s/b", b"")
        assert a.conn is b.conn and a.conn.client() is b.conn.client()
        await a.close()
        assert (await b.get("/s/a")) is not None  # closing one store leaves the shared client to the other
    finally:
        await a.close()
        await b.close()
