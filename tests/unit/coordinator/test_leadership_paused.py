"""The paused leader: leader A's whole event loop stalls past its lease TTL (as if the process were stopped)
while replica B, in another thread with its own loop and etcd client, wins. When A wakes up, its first
leader write must not commit, and A must step down (subsystems off) before the error reaches the caller."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet.common.clock import Clock, FakeClock, SystemClock
from gpufleet.common.errors import NotLeaderError
from gpufleet.coordinator.leadership import LeaderElector
from gpufleet.coordinator.store import Put
from gpufleet.coordinator.store.etcd import EtcdStore
from tests.helpers.etcd_server import ETCD_BINARY, EtcdServer, etcd_available, running_etcd

pytestmark = pytest.mark.timeout(60)
TTL_S = 3  # short, with some margin for a loaded test machine


class Recorder:
    def __init__(self) -> None:
        self.log: list[bool] = []

    async def set_enabled(self, enabled: bool) -> None:
        self.log.append(enabled)


class ReplicaThread:
    """Replica B: a LeaderElector running in its own thread and event loop."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.elector: LeaderElector | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        store = EtcdStore([self.endpoint])
        self.elector = LeaderElector(store, identity="b", address="b:7000", ttl_s=TTL_S)
        task = asyncio.create_task(self.elector.run())
        while not self._stop.is_set():
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()

    def __enter__(self) -> ReplicaThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if not etcd_available():
        pytest.skip(f"etcd binary {ETCD_BINARY} not found")
    with running_etcd(tmp_path / "etcd") as server:
        yield server


@pytest.mark.parametrize("clock", [FakeClock(), SystemClock()], ids=["clock-blind-to-the-pause", "real-clock"])
async def test_paused_leader_cannot_commit_after_another_replica_won(etcd: EtcdServer, clock: Clock) -> None:
    # With the FakeClock, A cannot tell it slept (its local lease check passes): only the store-side fence
    # protects the write. With the real clock, A notices the expired lease and refuses before sending.
    store = EtcdStore([etcd.endpoint])
    a = LeaderElector(store, identity="a", address="a:7000", ttl_s=TTL_S, clock=clock)
    sub = Recorder()
    a.add_subsystem(sub)
    ta = asyncio.create_task(a.run())
    try:
        async with asyncio.timeout(10):
            while not (a.is_leader and sub.log == [True]):
                await asyncio.sleep(0.01)
        assert (await a.leader_txn([Put("/paused/before", b"a")])).succeeded
        stale_fence = a.fence()
        with ReplicaThread(etcd.endpoint) as b_thread:
            async with asyncio.timeout(10):
                while b_thread.elector is None or b_thread.elector.leader is None:
                    await asyncio.sleep(0.02)
            b = b_thread.elector
            assert b.leader is not None and b.leader.id == "a"

            assert a.is_leader and sub.log == [True]  # A led without a break up to the pause
            # --- A's event loop stalls (no keep-alive, no watch) until B has won ---
            deadline = time.monotonic() + 15
            while not b.is_leader:
                assert time.monotonic() < deadline, "B never won while A was paused"
                time.sleep(0.05)
            # --- A wakes up; its first act is a leader write ---
            assert a.is_leader  # it still believes it leads
            with pytest.raises(NotLeaderError):
                await a.leader_txn([Put("/paused/after", b"a")])
            assert not a.is_leader
            assert sub.log == [True, False]  # disabled before the error reached us
            assert await store.get("/paused/after") is None
            assert not (await store.txn(stale_fence, [Put("/paused/after", b"a")])).succeeded
            assert b.is_leader
            async with asyncio.timeout(10):  # A follows B from now on
                while a.leader is None or a.leader.id != "b":
                    await asyncio.sleep(0.02)
            assert not a.is_leader and b.is_leader
    finally:
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        await store.close()
