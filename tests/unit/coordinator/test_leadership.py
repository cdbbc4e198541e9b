"""LeaderElector on the embedded store: winning, following, resigning, subsystem toggling, fencing and the
local lease-deadline check. (Election against real etcd: tests/contract/test_leadership_contract.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpufleet.common.clock import FakeClock
from gpufleet.common.errors import NotLeaderError
from gpufleet.coordinator.leadership import LeaderElector, LeaderInfo
from gpufleet.coordinator.store import ClusterStore, Compare, Put, open_store
from tests.helpers.narrow import leader_of, value_at

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A leader-only subsystem that records its toggles into a shared log."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.enabled = False

    async def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self.log.append(f"{self.name}:{'on' if enabled else 'off'}")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ClusterStore]:
    s = open_store("embedded", tmp_path)
    try:
        yield s
    finally:
        await s.close()


async def until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_single_replica_wins_at_once_and_enables_subsystems_in_order(store: ClusterStore) -> None:
    log: list[str] = []
    e = LeaderElector(store, identity="c1", address="10.0.0.1:7000", ttl_s=2)
    e.add_subsystem(Recorder("scheduler", log))
    e.add_subsystem(Recorder("drainer", log))
    task = asyncio.create_task(e.run())
    try:
        leader = await asyncio.wait_for(e.wait_leader(), 2)
        assert e.is_leader and leader == LeaderInfo("c1", "10.0.0.1:7000", leader.epoch)
        kv = await store.get("/gpufleet/leader")
        assert kv is not None and kv.create_revision == leader.epoch and kv.lease != 0
        await until(lambda: len(log) == 2)
        assert log == ["scheduler:on", "drainer:on"]
        (replica,) = await e.list_replicas()
        assert (replica.id, replica.address, replica.leader) == ("c1", "10.0.0.1:7000", True)
    finally:
        await stop(task)
    assert log == ["scheduler:on", "drainer:on", "drainer:off", "scheduler:off"]  # disabled in reverse order
    assert not e.is_leader
    assert await store.get("/gpufleet/leader") is None  # the lease was revoked on the way out
    assert (await store.range("/gpufleet/replicas/"))[0] == []


async def test_two_replicas_one_leads_and_the_other_takes_over_when_it_stops(store: ClusterStore) -> None:
    log: list[str] = []
    a = LeaderElector(store, identity="a", address="a:1", ttl_s=2)
    b = LeaderElector(store, identity="b", address="b:1", ttl_s=2)
    a.add_subsystem(Recorder("a-sched", log))
    b.add_subsystem(Recorder("b-sched", log))
    ta = asyncio.create_task(a.run())
    await until(lambda: a.is_leader)
    tb = asyncio.create_task(b.run())
    try:
        info = await asyncio.wait_for(b.wait_leader(), 2)
        assert info.id == "a" and info.address == "a:1" and not b.is_leader
        assert sorted((r.id, r.leader) for r in await b.list_replicas()) == [("a", True), ("b", False)]
        with pytest.raises(NotLeaderError) as err:
            await b.leader_txn([Put("/gpufleet/x", b"from-b")])
        assert err.value.leader_address == "a:1"
        await stop(ta)  # a goes away (its lease is revoked on shutdown)
        await until(lambda: b.is_leader, timeout=2)
        assert b.leader is not None and b.leader.epoch > info.epoch
        await until(lambda: log[-1] == "b-sched:on")
        assert log == ["a-sched:on", "a-sched:off", "b-sched:on"]
    finally:
        ta.cancel()
        await stop(tb)


async def test_resign_hands_leadership_over(store: ClusterStore) -> None:
    a = LeaderElector(store, identity="a", address="a:1", ttl_s=2)
    b = LeaderElector(store, identity="b", address="b:1", ttl_s=2)
    ta = asyncio.create_task(a.run())
    await until(lambda: a.is_leader)
    tb = asyncio.create_task(b.run())
    try:
        await until(lambda: b.leader is not None)
        await a.resign()
        assert not a.is_leader
        await until(lambda: b.is_leader, timeout=2)
        await until(lambda: a.leader is not None and a.leader.id == "b")
        assert not a.is_leader
    finally:
        await stop(ta)
        await stop(tb)


async def test_leader_txn_fences_writes_and_reports_own_compare_failures(store: ClusterStore) -> None:
    a = LeaderElector(store, identity="a", address="a:1", ttl_s=2)
    ta = asyncio.create_task(a.run())
    try:
        await until(lambda: a.is_leader)
        res = await a.leader_txn([Put("/gpufleet/jobs/1", b"v1")])
        assert res.succeeded
        # the caller's own compare fails: no write, still the leader
        res = await a.leader_txn([Put("/gpufleet/jobs/1", b"v2")], [Compare("/gpufleet/jobs/1", "version", "==", 7)])
        assert not res.succeeded and a.is_leader
        assert await value_at(store, "/gpufleet/jobs/1") == b"v1"
        # the fence names the leader key's epoch and our exact value
        epoch_cmp, value_cmp = a.fence()
        assert (epoch_cmp.key, epoch_cmp.target, epoch_cmp.value) == ("/gpufleet/leader", "create", leader_of(a).epoch)
        assert value_cmp.target == "value" and value_cmp.value == await value_at(store, "/gpufleet/leader")
    finally:
        await stop(ta)
    assert not a.is_leader
    with pytest.raises(NotLeaderError):
        await a.leader_txn([Put("/gpufleet/jobs/1", b"late")])
    assert not (await store.txn(a.fence(), [Put("/gpufleet/jobs/1", b"late")])).succeeded  # never holds now


async def test_a_replaced_leader_cannot_write_and_steps_down_first(store: ClusterStore) -> None:
    """The leader key changed hands behind the leader's back (it did not see it yet): its fenced write fails,
    it disables its subsystems before NotLeaderError reaches the caller."""
    log: list[str] = []
    a = LeaderElector(store, identity="a", address="a:1", ttl_s=2)
    a.add_subsystem(Recorder("a-sched", log))
    ta = asyncio.create_task(a.run())
    try:
        await until(lambda: a.is_leader and log == ["a-sched:on"])
        # another replica's leader key replaces ours in one txn (as after our lease expired while we slept)
        res = await store.txn([], [Put("/gpufleet/leader", b'{"id": "b", "address": "b:1"}')])
        with pytest.raises(NotLeaderError):
            await a.leader_txn([Put("/gpufleet/jobs/9", b"stale")])  # runs before a's watch sees the change
        assert log == ["a-sched:on", "a-sched:off"] and not a.is_leader
        assert await store.get("/gpufleet/jobs/9") is None
        assert (await store.get("/gpufleet/leader")).mod_revision == res.revision  # type: ignore[union-attr]
    finally:
        await stop(ta)


async def test_leader_steps_down_before_writing_when_its_lease_outlived_the_ttl(store: ClusterStore) -> None:
    """A leader whose process slept past its TTL (its clock jumped) refuses to write at all."""
    clock = FakeClock()
    log: list[str] = []
    a = LeaderElector(store, identity="a", address="a:1", ttl_s=2, clock=clock)
    a.add_subsystem(Recorder("a-sched", log))
    ta = asyncio.create_task(a.run())
    try:
        await until(lambda: a.is_leader)
        first_epoch = leader_of(a).epoch
        clock.advance(3)  # no refresh for longer than the TTL
        _, rev_before = await store.range("/")
        with pytest.raises(NotLeaderError):
            await a.leader_txn([Put("/gpufleet/jobs/1", b"x")])
        assert not a.is_leader and log[-1] == "a-sched:off"
        assert await store.get("/gpufleet/jobs/1") is None
        # it starts a new session and, alone, wins again with a new epoch
        await until(lambda: a.is_leader and a.leader is not None and a.leader.epoch > first_epoch)
        assert rev_before < leader_of(a).epoch
    finally:
        await stop(ta)


def test_identity_must_be_a_key_segment(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(object(), identity="a/b", address="x")  # type: ignore[arg-type]


async def test_a_failing_subsystem_does_not_stop_the_others(
    store: ClusterStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def set_enabled(self, enabled: bool) -> None:
            raise RuntimeError("cannot start")

    log: list[str] = []
    e = LeaderElector(store, identity="a", address="a:1", ttl_s=2)
    e.add_subsystem(Broken())
    e.add_subsystem(Recorder("after-broken", log))
    task = asyncio.create_task(e.run())
    try:
        await until(lambda: log == ["after-broken:on"])
        assert e.is_leader
        assert "set_enabled(True) failed on Broken" in caplog.text
        late = Recorder("late", log)
        e.add_subsystem(late)  # added while leading: enabled at once
        await until(lambda: late.enabled)
    finally:
        await stop(task)
    assert log == ["after-broken:on", "late:on", "late:off", "after-broken:off"]
