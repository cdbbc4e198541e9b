"""Leader election on every store: exactly one leader, fast takeover when the leader's lease ends, replica
registry. Against etcd also: a crashed leader process, and a paused (SIGSTOPped) one that wakes up."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gpufleet.coordinator.leadership import LeaderElector
from gpufleet.coordinator.store import ClusterStore, open_store
from tests.helpers.etcd_server import EtcdServer
from tests.helpers.narrow import leader_of

pytestmark = pytest.mark.timeout(60)
_n = itertools.count()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["embedded", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ClusterStore]:
    if request.param == "etcd":
        s = open_store(request.getfixturevalue("etcd_server").url, tmp_path)
    else:
        s = open_store("embedded", tmp_path)
    try:
        yield s
    finally:
        await s.close()


def keys() -> tuple[str, str]:
    """A leader key and replicas prefix of this test alone (tests share one etcd per module)."""
    n = next(_n)
    return f"/lc{n}/leader", f"/lc{n}/replicas/"


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
    return loop.time() - start


async def stop(*tasks: asyncio.Task[None]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def elector(store: ClusterStore, name: str, key: str, replicas: str, ttl_s: int = 2) -> LeaderElector:
    return LeaderElector(store, identity=name, address=f"{name}:7000", key=key, ttl_s=ttl_s, replicas_prefix=replicas)


async def test_exactly_one_of_three_leads(store: ClusterStore) -> None:
    key, replicas = keys()
    es = [elector(store, n, key, replicas) for n in ("a", "b", "c")]
    tasks = [asyncio.create_task(e.run()) for e in es]
    try:
        await until(lambda: sum(e.is_leader for e in es) == 1 and all(e.leader is not None for e in es))
        for _ in range(50):  # stays that way
            assert sum(e.is_leader for e in es) == 1
            await asyncio.sleep(0.02)
        (leader,) = [e for e in es if e.is_leader]
        assert {leader_of(e).id for e in es} == {leader.identity}
        assert {leader_of(e).epoch for e in es} == {leader_of(leader).epoch}
        replicas_seen = await es[0].list_replicas()
        assert [(r.id, r.leader) for r in replicas_seen] == [(e.identity, e.is_leader) for e in es]
    finally:
        await stop(*tasks)


async def test_the_other_wins_within_the_ttl_when_the_leader_lease_is_revoked(store: ClusterStore) -> None:
    key, replicas = keys()
    a, b = elector(store, "a", key, replicas), elector(store, "b", key, replicas)
    ta = asyncio.create_task(a.run())
    await until(lambda: a.is_leader)
    tb = asyncio.create_task(b.run())
    try:
        await until(lambda: b.leader is not None)
        old_epoch = leader_of(b).epoch
        await store.revoke_lease(a.lease)  # as if a's lease expired
        took = await until(lambda: b.is_leader, timeout=a.ttl_s)
        assert took < a.ttl_s
        assert b.leader is not None and b.leader.epoch > old_epoch
        await until(lambda: not a.is_leader and a.leader is not None and a.leader.id == "b", timeout=a.ttl_s + 2)
        # a registered itself again with its new session, as a follower
        async with asyncio.timeout(5):
            while [(r.id, r.leader) for r in await b.list_replicas()] != [("a", False), ("b", True)]:
                await asyncio.sleep(0.05)
    finally:
        await stop(ta, tb)


async def test_replica_registration_disappears_with_the_replica(store: ClusterStore) -> None:
    key, replicas = keys()
    a, b = elector(store, "a", key, replicas), elector(store, "b", key, replicas)
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    try:
        await until(lambda: a.leader is not None and b.leader is not None)
        await until(lambda: a.lease != 0 and b.lease != 0)
        kvs, _ = await store.range(replicas)
        assert [kv.key.removeprefix(replicas) for kv in kvs] == ["a", "b"]
        await stop(tb)
        kvs, _ = await store.range(replicas)
        assert [kv.key.removeprefix(replicas) for kv in kvs] == ["a"]
    finally:
        await stop(ta, tb)


# -- real processes against etcd ---------------------------------------------------------------------------------


def spawn(server: EtcdServer, name: str, ttl_s: int, prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.contract.elector_process", server.endpoint, name, str(ttl_s), prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reap(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


async def _leader_id(store: ClusterStore, key: str) -> str | None:
    kv = await store.get(key)
    return None if kv is None else str(__import__("json").loads(kv.value)["id"])


async def test_leader_process_crash_new_leader_within_ttl(etcd_server: EtcdServer, tmp_path: Path) -> None:
    store = open_store(etcd_server.url, tmp_path)
    proc = spawn(etcd_server, "p1", 2, "/crash/writes/")
    try:
        async with asyncio.timeout(20):
            while await _leader_id(store, "/gpufleet/leader") != "p1":
                await asyncio.sleep(0.05)
        b = LeaderElector(store, identity="b", address="b:7000", ttl_s=2)
        tb = asyncio.create_task(b.run())
        try:
            await until(lambda: b.leader is not None and b.leader.id == "p1")
            proc.kill()  # crash: nothing is revoked, the lease must expire
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await until(lambda: b.is_leader, timeout=8)
            assert loop.time() - t0 < 2 + 1.5  # TTL plus etcd's expiry check granularity and our watch
        finally:
            await stop(tb)
    finally:
        reap(proc)
        await store.close()


async def test_paused_leader_process_cannot_write_after_another_won(etcd_server: EtcdServer, tmp_path: Path) -> None:
    store = open_store(etcd_server.url, tmp_path)
    prefix = "/paused/writes/"
    key = "/gpufleet/leader"
    await store.delete(key)
    proc = spawn(etcd_server, "p1", 2, prefix)
    b: Any = None
    tb = None
    try:
        async with asyncio.timeout(20):
            while not (await store.range(prefix + "p1/"))[0]:  # leading and writing
                await asyncio.sleep(0.05)
        b = LeaderElector(store, identity="b", address="b:7000", ttl_s=2)
        tb = asyncio.create_task(b.run())
        await until(lambda: b.leader is not None and b.leader.id == "p1")
        os.kill(proc.pid, signal.SIGSTOP)  # the leader hangs: no keep-alive, no watch, no writes
        await until(lambda: b.is_leader, timeout=8)
        b_epoch = b.leader.epoch
        os.kill(proc.pid, signal.SIGCONT)  # it wakes up believing it leads
        await asyncio.sleep(1.5)
        writes, _ = await store.range(prefix + "p1/")
        assert writes and all(kv.mod_revision < b_epoch for kv in writes)
        assert b.is_leader
        out = reap(proc)
        assert out.splitlines()[0] == "LEADER" and "FOLLOWER" in out.splitlines()[1:], out
    finally:
        if tb is not None:
            await stop(tb)
        reap(proc)
        await store.close()


async def test_leader_steps_down_when_etcd_is_gone_past_the_ttl_and_leads_again_after(
    fresh_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    store = open_store(fresh_etcd_server.url, tmp_path)
    toggles: list[bool] = []

    class Sub:
        async def set_enabled(self, enabled: bool) -> None:
            toggles.append(enabled)

    a = LeaderElector(store, identity="a", address="a:7000", ttl_s=2)
    a.add_subsystem(Sub())
    ta = asyncio.create_task(a.run())
    try:
        await until(lambda: a.is_leader)
        first_epoch = leader_of(a).epoch
        fresh_etcd_server.kill()
        took = await until(lambda: not a.is_leader, timeout=6)
        assert took <= 2 + 0.5  # no refresh within the TTL: it cannot know it still leads
        assert toggles == [True, False]
        fresh_etcd_server.start()
        await until(lambda: a.is_leader, timeout=10)
        assert a.leader is not None and a.leader.epoch > first_epoch
        assert toggles == [True, False, True]
    finally:
        await stop(ta)
        await store.close()
