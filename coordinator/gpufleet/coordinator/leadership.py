"""Leader election over the ``ClusterStore``, fencing of leader writes, and replica registration.

How it works (details and failure cases in docs/architecture/leadership.md):

* Each replica runs ``LeaderElector.run()``. A *session* is one lease (``ttl_s``) kept alive by a
  ``LeaseKeeper``; the replica registers ``/gpufleet/replicas/<identity>`` with it.
* Campaign: one txn ``create_revision(/gpufleet/leader) == 0 -> put(/gpufleet/leader, value, lease)``. The
  winner's *epoch* is the leader key's create revision. Followers watch the key and campaign again as soon as it
  is deleted (lease expiry after a crash, or a resign), so a new leader follows within about one TTL.
* Leader value: JSON ``{"id", "address", "lease", "since_ms"}``, exact bytes kept by the elector.
* Fencing: every leader write is ``txn(fence() + compares, ops)`` where ``fence()`` checks the leader key's
  create revision == epoch and value == our bytes. A leader that was paused past its lease (and replaced) cannot
  write: the fence fails, ``leader_txn`` steps down at once and raises ``NotLeaderError``. Before sending, it also
  checks the lease deadline locally and steps down if the lease may have expired.
* Leader-only subsystems (``LeaderOnly.set_enabled``) are enabled in order after winning and disabled in reverse
  order as the very first thing when leadership is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import NotLeaderError, StoreError, StoreUnavailableError
from gpufleet.common.retry import RetryPolicy

from .store.base import ClusterStore, CompactedError, Compare, Delete, Put, TxnResult
from .store.leases import LeaseKeeper

log = logging.getLogger(__name__)

REPLICAS_PREFIX = "/gpufleet/replicas/"
#: backoff between store retries inside the election loops
ELECTION_RETRY = RetryPolicy(initial_s=0.1, multiplier=2.0, max_interval_s=2.0, jitter=0.2)


class LeaderOnly(Protocol):
    async def set_enabled(self, enabled: bool) -> None:
        """Start (True) or stop (False) a leader-only loop. Must not raise for a repeated call."""
        ...


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    id: str
    address: str
    epoch: int  # create_revision of the leader key


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    id: str
    address: str
    leader: bool
    registered_ms: int


class _SessionLostError(Exception):
    """Internal: this session's lease is gone; start a new one."""


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


class LeaderElector:
    """Campaigns for ``key``, keeps leadership alive, fences leader writes, toggles leader-only subsystems."""

    def __init__(
        self,
        store: ClusterStore,
        *,
        identity: str,
        address: str,
        key: str = "/gpufleet/leader",
        ttl_s: int = 5,
        clock: Clock | None = None,
        replicas_prefix: str = REPLICAS_PREFIX,
    ) -> None:
        if not identity or "/" in identity:
            raise ValueError(f"replica identity must be non-empty and contain no '/': {identity!r}")
        self.store = store
        self.identity = identity
        self.address = address
        self.key = key
        self.ttl_s = ttl_s
        self.clock = clock or SystemClock()
        self.replicas_prefix = replicas_prefix
        self._wall = SystemClock()
        self._subsystems: list[LeaderOnly] = []
        self._enabled: dict[int, bool] = {}
        self._toggle_lock = asyncio.Lock()
        self._is_leader = False
        self._epoch = 0
        self._value = b""
        self._leader: LeaderInfo | None = None
        self._leader_changed = asyncio.Event()
        self._keeper: LeaseKeeper | None = None
        self._hold_off_until = 0.0
        self._stale_leases: list[int] = []  # leases of ended sessions we could not revoke yet
        self._background: set[asyncio.Task[None]] = set()

    # -- public state ------------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @property
    def leader(self) -> LeaderInfo | None:
        return self._leader

    @property
    def lease(self) -> int:
        """The current session's lease (0 between sessions)."""
        return self._keeper.lease if self._keeper is not None else 0

    @property
    def replica_key(self) -> str:
        return self.replicas_prefix + self.identity

    def add_subsystem(self, s: LeaderOnly) -> None:
        """Register a leader-only subsystem; enabled on winning, disabled (first thing) on losing."""
        self._subsystems.append(s)
        if self._is_leader:
            task = asyncio.get_running_loop().create_task(self._sync_subsystems())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def fence(self) -> list[Compare]:
        """Compares that hold only while we still lead (never hold when we do not)."""
        return [Compare(self.key, "create", "==", self._epoch), Compare(self.key, "value", "==", self._value)]

    async def wait_leader(self) -> LeaderInfo:
        """Wait until some leader (maybe us) is known."""
        while True:
            leader = self._leader
            if leader is not None:
                return leader
            self._leader_changed.clear()
            await self._leader_changed.wait()

    async def list_replicas(self) -> list[ReplicaInfo]:
        """Every registered (live) replica, sorted by id, with the current leader marked."""
        kvs, _ = await self.store.range(self.replicas_prefix)
        leader = self._leader
        out = []
        for kv in kvs:
            data = _decode(kv.value)
            rid = kv.key.removeprefix(self.replicas_prefix)
            out.append(
                ReplicaInfo(
                    id=rid,
                    address=str(data.get("address", "")),
                    leader=leader is not None and leader.id == rid,
                    registered_ms=int(data.get("registered_ms", 0)),
                )
            )
        return out

    # -- leader writes -----------------------------------------------------------------------------------------

    async def leader_txn(self, success: Sequence[Put | Delete], compares: Sequence[Compare] = ()) -> TxnResult:
        """``txn(fence + compares, success)``. If we no longer lead: step down at once, raise NotLeaderError.
        ``succeeded`` is False only when one of the caller's own ``compares`` failed."""
        if not self._is_leader:
            raise self._not_leader()
        if self._keeper is None or not self._keeper.alive():
            await self._step_down("the lease may have expired (no refresh within its TTL)")
            raise self._not_leader()
        epoch, value = self._epoch, self._value
        res = await self.store.txn([*self.fence(), *compares], success)
        if res.succeeded:
            return res
        kv = await self.store.get(self.key)
        if kv is None or kv.create_revision != epoch or kv.value != value:
            await self._step_down("a fenced write found another leader (or none)")
            raise self._not_leader()
        return res

    def _not_leader(self) -> NotLeaderError:
        leader = self._leader
        if leader is not None and leader.id != self.identity:
            return NotLeaderError(leader.address)
        return NotLeaderError("", f"replica {self.identity} is not the leader; no leader is known yet")

    # -- main loop ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, keep alive, and watch, forever (until cancelled); one lease session after another."""
        delays = ELECTION_RETRY.delays()
        try:
            while True:
                try:
                    await self._session()
                    delays = ELECTION_RETRY.delays()
                except (StoreError, _SessionLostError) as e:
                    await self._step_down(f"session ended: {e}")
                    delay = next(delays)
                    log.warning("leader election session of %s ended (%s); next in %.1fs", self.identity, e, delay)
                    await asyncio.sleep(delay)
        finally:
            await self._step_down("shutting down")
            await self._end_session()

    async def resign(self) -> None:
        """Give up leadership now (disable subsystems, delete our leader key) and let another replica win:
        this replica does not campaign again for one TTL."""
        self._hold_off_until = self.clock.monotonic() + self.ttl_s
        if not self._is_leader:
            return
        epoch_fence = self.fence()
        await self._step_down("resigned")
        await self.store.txn(epoch_fence, [Delete(self.key)])

    async def _session(self) -> None:
        granted_at = self.clock.monotonic()
        lease = await self.store.grant_lease(self.ttl_s)
        keeper = self._keeper = LeaseKeeper(self.store, lease, self.ttl_s, clock=self.clock, granted_at=granted_at)
        now_ms = self._wall.now_ms()
        self._value = json.dumps(
            {"id": self.identity, "address": self.address, "lease": lease, "since_ms": now_ms}, sort_keys=True
        ).encode()
        registration = json.dumps({"address": self.address, "registered_ms": now_ms}, sort_keys=True).encode()
        tasks: list[asyncio.Future[None]] = []
        try:
            await self.store.put(self.replica_key, registration, lease=lease)
            await self._revoke_stale_leases()
            keep = asyncio.ensure_future(keeper.run())
            campaign = asyncio.ensure_future(self._campaign(lease))
            tasks = [keep, campaign]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if keep in done:
                exc = keep.exception()
                raise _SessionLostError(str(exc) if exc else "keep-alive ended")
            campaign.result()  # re-raise the campaign's error
            raise _SessionLostError("campaign ended")
        finally:
            await self._step_down("the session ended")  # before anything else
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, StoreError, _SessionLostError):
                    await t
            await self._end_session()

    async def _end_session(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        try:  # so that followers take over at once rather than after the TTL
            async with asyncio.timeout(2):  # not wait_for: on 3.11 it can swallow a cancel
                await self.store.revoke_lease(keeper.lease)
        except (StoreError, TimeoutError):
            self._stale_leases.append(keeper.lease)  # retried by the next session, once the store answers

    async def _revoke_stale_leases(self) -> None:
        """Revoke leases of earlier sessions (their leader key would block every campaign until it expires,
        and etcd gives every lease a full TTL again after a restart)."""
        for lease in list(self._stale_leases):
            try:
                async with asyncio.timeout(2):  # not wait_for: on 3.11 it can swallow a cancel
                    await self.store.revoke_lease(lease)
            except (StoreError, TimeoutError) as e:
                log.info("could not revoke old lease %x yet: %s", lease, e)
                return
            self._stale_leases.remove(lease)

    async def _campaign(self, lease: int) -> None:
        """Try to win; when someone else leads, watch the key and try again when it disappears."""
        delays = ELECTION_RETRY.delays()
        while True:
            try:
                wait = self._hold_off_until - self.clock.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                watch_from = await self._try_win(lease)
                await self._follow(watch_from)
                delays = ELECTION_RETRY.delays()
            except (StoreUnavailableError, CompactedError) as e:
                delay = next(delays)
                log.info("election on %s: %s; retrying in %.1fs", self.key, e, delay)
                await asyncio.sleep(delay)

    async def _try_win(self, lease: int) -> int:
        """One campaign txn; returns the revision to watch the leader key from."""
        res = await self.store.txn(
            [Compare(self.key, "create", "==", 0)], [Put(self.key, self._value, lease=lease)], []
        )
        if res.succeeded:
            await self._become_leader(res.revision)
            return res.revision + 1
        kv = await self.store.get(self.key)
        if kv is None:
            return 0  # it vanished between the txn and the get: campaign again right away
        if kv.value == self._value and kv.lease == lease:
            await self._become_leader(kv.create_revision)  # ours already (an earlier, ambiguous attempt)
        else:
            if self._is_leader:
                await self._step_down("another replica holds the leader key")
            self._observe(kv.value, kv.create_revision)
        return kv.mod_revision + 1

    async def _follow(self, watch_from: int) -> None:
        """Watch the leader key; return when it is deleted (time to campaign)."""
        if watch_from <= 0:
            return
        async for ev in self.store.watch(self.key, start_revision=watch_from):
            if ev.kv.key != self.key:
                continue  # a sibling key sharing the prefix
            if ev.type == "delete":
                if self._is_leader:
                    await self._step_down("the leader key was deleted (lease expired or revoked)")
                self._set_leader(None)
                return
            if self._is_leader and (ev.kv.create_revision != self._epoch or ev.kv.value != self._value):
                await self._step_down("the leader key was overwritten")
            if not self._is_leader:
                self._observe(ev.kv.value, ev.kv.create_revision)

    # -- transitions -------------------------------------------------------------------------------------------

    def _observe(self, raw: bytes, epoch: int) -> None:
        data = _decode(raw)
        self._set_leader(LeaderInfo(str(data.get("id", "")), str(data.get("address", "")), epoch))

    def _set_leader(self, leader: LeaderInfo | None) -> None:
        if leader != self._leader:
            self._leader = leader
            self._leader_changed.set()

    async def _become_leader(self, epoch: int) -> None:
        if self._is_leader and self._epoch == epoch:
            return
        self._epoch = epoch
        self._is_leader = True
        self._set_leader(LeaderInfo(self.identity, self.address, epoch))
        log.info("replica %s is now the leader (epoch %d)", self.identity, epoch)
        await self._sync_subsystems()

    async def _step_down(self, why: str) -> None:
        """Leave leadership: flags first (fence() stops holding), then disable subsystems in reverse order."""
        was_leader = self._is_leader
        self._is_leader = False
        self._epoch = 0
        if was_leader:
            log.warning("replica %s stepped down: %s", self.identity, why)
            if self._leader is not None and self._leader.id == self.identity:
                self._set_leader(None)
        await self._sync_subsystems()

    async def _sync_subsystems(self) -> None:
        """Bring every subsystem to the current leadership state (enable in order, disable in reverse)."""
        async with self._toggle_lock:
            while True:
                want = self._is_leader
                order = self._subsystems if want else list(reversed(self._subsystems))
                pending = [s for s in order if self._enabled.get(id(s), False) != want]
                if not pending:
                    return
                for s in pending:
                    if self._is_leader != want:
                        break  # leadership changed meanwhile: start over with the new state
                    try:
                        await s.set_enabled(want)
                    except Exception:
                        log.exception("set_enabled(%s) failed on %s", want, type(s).__name__)
                    self._enabled[id(s)] = want
