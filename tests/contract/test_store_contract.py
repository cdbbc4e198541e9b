"""One ClusterStore contract suite, run against every implementation (embedded SQLite and a real etcd)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.coordinator.store import (
    ClusterStore,
    CompactedError,
    Compare,
    Delete,
    LeaseExpiredError,
    Put,
    StoreError,
    WatchEvent,
    open_store,
)
from tests.helpers.etcd_server import EtcdServer
from tests.helpers.narrow import value_at

pytestmark = pytest.mark.timeout(60)

IMPLEMENTATIONS = ["embedded", "etcd"]
_counter = itertools.count()


@pytest.fixture(params=IMPLEMENTATIONS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        s = open_store(server.url, tmp_path)
    else:
        s = open_store("embedded", tmp_path)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def p() -> Iterator[str]:
    """A key prefix of this test alone (tests share one etcd per module)."""
    yield f"/contract/{next(_counter)}-{id(object())}/"


async def take(it: AsyncIterator[WatchEvent], n: int, timeout: float = 10.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for ev in it:
            out.append(ev)
            if len(out) == n:
                break
    return out


async def eventually_absent(store: ClusterStore, key: str, within_s: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await store.get(key) is not None:
        assert loop.time() - start < within_s, f"{key} still present after {within_s}s"
        await asyncio.sleep(0.05)
    return loop.time() - start


async def test_put_get_versions_and_revisions(store: ClusterStore, p: str) -> None:
    assert await store.get(p + "a") is None
    r1 = await store.put(p + "a", b"one")
    kv = await store.get(p + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        p + "a",
        b"one",
        r1,
        r1,
        1,
        0,
    )
    r2 = await store.put(p + "a", b"two")
    assert r2 == r1 + 1
    kv = await store.get(p + "a")
    assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", r1, r2, 2)
    healthy, rev, _ = await store.status()
    assert healthy and rev >= r2


async def test_range_is_sorted_by_key_and_prefix_exact(store: ClusterStore, p: str) -> None:
    for k in ["b", "a/2", "a/1", "ab", "c"]:
        await store.put(p + k, k.encode())
    last = await store.put(p + "zz", b"z")
    kvs, rev = await store.range(p + "a")
    assert [kv.key for kv in kvs] == [p + "a/1", p + "a/2", p + "ab"]
    assert rev >= last
    kvs, _ = await store.range(p + "a/")
    assert [kv.value for kv in kvs] == [b"a/1", b"a/2"]
    kvs, _ = await store.range(p)
    assert [kv.key.removeprefix(p) for kv in kvs] == ["a/1", "a/2", "ab", "b", "c", "zz"]
    assert (await store.range(p + "nothing/"))[0] == []


async def test_delete_single_and_prefix(store: ClusterStore, p: str) -> None:
    for k in ["x/1", "x/2", "x2", "y"]:
        await store.put(p + k, b"v")
    assert await store.delete(p + "y") == 1
    assert await store.delete(p + "y") == 0
    assert await store.delete(p + "x/", prefix=True) == 2
    kvs, _ = await store.range(p)
    assert [kv.key for kv in kvs] == [p + "x2"]
    # re-creating a deleted key starts a new life: new create revision, version 1
    rev = await store.put(p + "y", b"again")
    kv = await store.get(p + "y")
    assert kv is not None and kv.create_revision == rev and kv.version == 1


async def test_delete_of_nothing_does_not_bump_revision(store: ClusterStore, p: str) -> None:
    rev = await store.put(p + "k", b"v")
    assert await store.delete(p + "missing") == 0
    _, rev_after = await store.range(p)
    assert rev_after == rev


async def test_txn_create_if_absent(store: ClusterStore, p: str) -> None:
    key = p + "leader"
    absent = [Compare(key, "create", "==", 0)]
    first = await store.txn(absent, [Put(key, b"me")], [Put(p + "lost", b"1")])
    assert first.succeeded
    kv = await store.get(key)
    assert kv is not None and kv.mod_revision == first.revision and kv.value == b"me"
    second = await store.txn(absent, [Put(key, b"you")], [Put(p + "lost", b"1")])
    assert not second.succeeded
    assert second.revision == first.revision + 1  # the failure branch wrote
    assert await value_at(store, key) == b"me"
    assert await store.get(p + "lost") is not None


@pytest.mark.parametrize(
    ("target", "op", "make", "expect"),
    [
        ("value", "==", lambda kv: b"v2", True),
        ("value", "==", lambda kv: b"v1", False),
        ("value", "!=", lambda kv: b"v1", True),
        ("value", ">", lambda kv: b"v1", True),
        ("value", "<", lambda kv: b"v1", False),
        ("version", "==", lambda kv: 2, True),
        ("version", ">", lambda kv: 1, True),
        ("version", "<", lambda kv: 2, False),
        ("version", "!=", lambda kv: 2, False),
        ("create", "==", lambda kv: kv.create_revision, True),
        ("create", "==", lambda kv: 0, False),
        ("create", "<", lambda kv: kv.mod_revision, True),
        ("mod", "==", lambda kv: kv.mod_revision, True),
        ("mod", "==", lambda kv: kv.create_revision, False),
        ("mod", ">", lambda kv: kv.create_revision, True),
        ("mod", "!=", lambda kv: kv.mod_revision, False),
    ],
)
async def test_txn_compare_targets(store: ClusterStore, p: str, target: Any, op: Any, make: Any, expect: bool) -> None:
    key = p + "k"
    await store.put(key, b"v1")
    await store.put(key, b"v2")  # version 2, create < mod
    kv = await store.get(key)
    res = await store.txn([Compare(key, target, op, make(kv))], [Put(p + "ok", b"")], [Put(p + "failed", b"")])
    assert res.succeeded is expect
    assert (await store.get(p + "ok") is not None) is expect
    assert (await store.get(p + "failed") is not None) is (not expect)


async def test_txn_on_absent_key_and_multiple_ops(store: ClusterStore, p: str) -> None:
    missing = p + "missing"
    # a value compare on a missing key always fails; version/mod compare as 0
    assert not (await store.txn([Compare(missing, "value", "==", b"")], [Put(p + "a", b"")])).succeeded
    assert (await store.txn([Compare(missing, "version", "==", 0)], [Put(p + "a", b"")])).succeeded
    assert (await store.txn([Compare(missing, "mod", "==", 0)], [Put(p + "b", b"")])).succeeded
    # all compares must hold; all ops of one txn share one revision
    await store.put(p + "d/1", b"")
    await store.put(p + "d/2", b"")
    res = await store.txn(
        [Compare(p + "a", "version", "==", 1), Compare(p + "b", "version", "==", 1)],
        [Put(p + "c", b"x"), Delete(p + "a"), Delete(p + "d/", prefix=True)],
    )
    assert res.succeeded
    kvs, rev = await store.range(p)
    assert [kv.key for kv in kvs] == [p + "b", p + "c"]
    assert rev == res.revision and kvs[1].mod_revision == res.revision
    res = await store.txn([Compare(p + "a", "version", "==", 1), Compare(p + "b", "version", "==", 1)], [])
    assert not res.succeeded and res.revision == rev  # failure branch empty: nothing written


async def test_txn_touching_one_key_twice_is_refused(store: ClusterStore, p: str) -> None:
    with pytest.raises(StoreError):
        await store.txn([], [Put(p + "a", b"1"), Put(p + "a", b"2")])
    with pytest.raises(StoreError):
        await store.txn([], [Delete(p, prefix=True), Put(p + "a", b"1")])
    assert (await store.range(p))[0] == []
    assert (await store.txn([], [Put(p + "a", b"1"), Delete(p + "b"), Delete(p + "b")])).succeeded


async def test_lease_expiry_deletes_its_keys(store: ClusterStore, p: str) -> None:
    lease = await store.grant_lease(1)
    it = store.watch(p)
    watched = asyncio.ensure_future(take(it, 2))
    await asyncio.sleep(0.2)  # let the watch start before writing
    await store.put(p + "owned", b"x", lease=lease)
    await store.put(p + "kept", b"y")
    kv = await store.get(p + "owned")
    assert kv is not None and kv.lease == lease
    await eventually_absent(store, p + "owned", within_s=6)
    assert await store.get(p + "kept") is not None
    events = await watched
    assert [(e.type, e.kv.key) for e in events] == [("put", p + "owned"), ("put", p + "kept")]
    with pytest.raises(LeaseExpiredError):
        await store.refresh_lease(lease)


async def test_lease_refresh_keeps_keys_and_revoke_deletes_them(store: ClusterStore, p: str) -> None:
    lease = await store.grant_lease(1)
    await store.put(p + "a", b"", lease=lease)
    await store.put(p + "b", b"", lease=lease)
    for _ in range(8):  # 2.4 s > TTL, refreshed all along
        assert await store.refresh_lease(lease) >= 1
        await asyncio.sleep(0.3)
    assert len((await store.range(p))[0]) == 2
    await store.revoke_lease(lease)
    assert (await store.range(p))[0] == []
    with pytest.raises(LeaseExpiredError):
        await store.refresh_lease(lease)


async def test_put_with_unknown_lease_is_refused(store: ClusterStore, p: str) -> None:
    lease = await store.grant_lease(5)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseExpiredError):
        await store.put(p + "k", b"", lease=lease)
    assert await store.get(p + "k") is None


async def test_watch_from_revision_replays_history_then_follows(store: ClusterStore, p: str) -> None:
    r1 = await store.put(p + "a", b"1")
    await store.put(p + "b", b"2")
    await store.put(p + "other-prefix-is-not/x", b"")
    await store.put("/elsewhere" + p, b"")
    await store.delete(p + "a")
    it = store.watch(p, start_revision=r1)
    got = await take(it, 4)
    assert [(e.type, e.kv.key.removeprefix(p)) for e in got] == [
        ("put", "a"),
        ("put", "b"),
        ("put", "other-prefix-is-not/x"),
        ("delete", "a"),
    ]
    assert got[0].revision == r1 and got[0].kv.value == b"1" and got[0].kv.version == 1
    assert got[3].kv.value == b"" and got[3].kv.mod_revision == got[3].revision
    assert [e.revision for e in got] == sorted(e.revision for e in got)
    later = asyncio.ensure_future(take(it, 1))
    r_live = await store.put(p + "c", b"3")
    (live,) = await later
    assert (live.type, live.kv.key, live.revision) == ("put", p + "c", r_live)


async def test_watch_from_now_sees_only_new_changes_and_txn_events(store: ClusterStore, p: str) -> None:
    await store.put(p + "old", b"")
    it = store.watch(p)
    watched = asyncio.ensure_future(take(it, 3))
    await asyncio.sleep(0.2)
    res = await store.txn([], [Put(p + "t1", b"a"), Put(p + "t2", b"b")])
    await store.delete(p + "old")
    events = await watched
    assert [(e.type, e.kv.key.removeprefix(p), e.revision) for e in events] == [
        ("put", "t1", res.revision),
        ("put", "t2", res.revision),
        ("delete", "old", res.revision + 1),
    ]


async def test_watch_from_compacted_revision_raises(store: Any, p: str) -> None:
    first = await store.put(p + "k", b"1")
    for i in range(3):
        await store.put(p + "k", str(i).encode())
    latest = await store.put(p + "k", b"last")
    await store.compact(latest)
    with pytest.raises(CompactedError):
        await take(store.watch(p, start_revision=first), 1)
    # the compact revision itself is still watchable
    (ev,) = await take(store.watch(p, start_revision=latest), 1)
    assert ev.kv.value == b"last"
