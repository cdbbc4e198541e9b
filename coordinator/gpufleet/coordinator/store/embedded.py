"""``EmbeddedStore``: the zero-setup, single-process ``ClusterStore`` in one SQLite file (see store/base.py).

Semantics follow etcd (one global revision, create/mod revision, version, compares, prefix ranges, watch with
history, leases) so the coordinator code and the contract suite do not care which store is behind them.

Durability and limits:

* One file (``state_dir/store.db`` by default) in WAL mode with ``synchronous=FULL``: a write that returned is
  on disk. Leases are durable too; on reopen every lease gets a full TTL again (as etcd does after a restart).
* Single process: a lock file (``<file>.lock``, ``flock``) refuses a second opener with a clear error. Several
  coordinators (HA) need ``etcd://``.
* The event history behind ``watch(start_revision=...)`` keeps the newest ``max_history`` events; older ones are
  compacted and a watch that needs them raises :class:`CompactedError`.
* SQLite calls run inline on the event loop: each is a short local transaction (one fsync per write).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpufleet.common.clock import Clock
from gpufleet.common.errors import StoreError, StoreUnavailableError

from .base import (
    CompactedError,
    Compare,
    Delete,
    KeyValue,
    LeaseExpiredError,
    Put,
    TxnResult,
    WatchEvent,
    compare_holds,
    prefix_end,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL, type INTEGER NOT NULL, key BLOB NOT NULL,
    value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL,
    lease INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_rev ON events (rev);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
"""

_PUT, _DELETE = 0, 1
_KV_COLS = "key, value, create_rev, mod_rev, version, lease"


@dataclass(slots=True, eq=False)
class _Watcher:
    start: bytes
    end: bytes  # b"\0": no end
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)

    def matches(self, key: bytes) -> bool:
        return key >= self.start and (self.end == b"\0" or key < self.end)


class EmbeddedStore:
    """A ``ClusterStore`` in one local SQLite file, for a single coordinator process."""

    kind = "embedded"

    def __init__(self, path: Path, *, max_history: int = 10_000, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.endpoints: list[str] = [str(self.path)]
        self._max_history = max_history
        self._now = clock.monotonic if clock is not None else time.monotonic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            os.close(self._lock_fd)
            raise StoreUnavailableError(f"cannot open the embedded store {self.path}: {e}") from e
        self._revision = self._meta("revision")
        self._compacted_through = self._meta("compacted_through")
        self._next_lease = self._meta("next_lease") or 0x1000
        self._event_count: int = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        now = self._now()
        self._leases: dict[int, tuple[int, float]] = {
            lid: (ttl, now + ttl) for lid, ttl in self._db.execute("SELECT id, ttl FROM leases")
        }
        self._watchers: set[_Watcher] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- setup -------------------------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreUnavailableError(
                f"the embedded store {self.path} is in use by another process (pid {holder}); it serves one "
                "coordinator process only: stop the other one, or use --store etcd://host:2379,... for several"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"the embedded store {self.path} is closed")
        if self._reaper is None or self._reaper.done() or self._reaper.get_loop() is not asyncio.get_running_loop():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_leases(), name="embedded-lease-reaper")

    # -- reads -------------------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        self._expire_due()
        row = self._db.execute(f"SELECT {_KV_COLS} FROM kv WHERE key = ?", (key.encode(),)).fetchone()
        return _kv(row) if row else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check_open()
        self._expire_due()
        return [_kv(r) for r in self._select_range(prefix.encode())], self._revision

    def _select_range(self, start: bytes) -> list[tuple[bytes, bytes, int, int, int, int]]:
        end = prefix_end(start) if start else b"\0"
        if end == b"\0":
            return list(self._db.execute(f"SELECT {_KV_COLS} FROM kv WHERE key >= ? ORDER BY key", (start,)))
        sql = f"SELECT {_KV_COLS} FROM kv WHERE key >= ? AND key < ? ORDER BY key"
        return list(self._db.execute(sql, (start, end)))

    # -- writes ------------------------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check_open()
        self._expire_due()
        self._commit([Put(key, value, lease)])
        return self._revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        self._check_open()
        self._expire_due()
        return len(self._commit([Delete(key, prefix)]))

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        self._check_open()
        _check_no_duplicate_keys(success)
        _check_no_duplicate_keys(failure)
        self._expire_due()
        ok = all(compare_holds(c, self._get_sync(c.key)) for c in compares)
        self._commit(success if ok else failure)
        return TxnResult(ok, self._revision)

    def _get_sync(self, key: str) -> KeyValue | None:
        row = self._db.execute(f"SELECT {_KV_COLS} FROM kv WHERE key = ?", (key.encode(),)).fetchone()
        return _kv(row) if row else None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One SQLite write transaction (the connection is in autocommit mode otherwise)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _commit(self, ops: Iterable[Put | Delete], *, drop_lease: int = 0) -> list[WatchEvent]:
        """Apply ``ops`` as one revision (none if nothing changed); publish the events to watchers."""
        rev = self._revision + 1
        events: list[WatchEvent] = []
        with self._tx():
            if drop_lease:
                self._db.execute("DELETE FROM leases WHERE id = ?", (drop_lease,))
            for op in ops:
                events.extend(self._apply_put(op, rev) if isinstance(op, Put) else self._apply_delete(op, rev))
            if not events:
                return events
            self._db.executemany(
                "INSERT INTO events (rev, type, key, value, create_rev, mod_rev, version, lease) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_event_row(e) for e in events],
            )
            self._set_meta("revision", rev)
        self._revision = rev
        self._event_count += len(events)
        self._publish(events)
        if self._event_count > self._max_history + max(16, self._max_history // 10):
            self._trim_history()
        return events

    def _apply_put(self, op: Put, rev: int) -> list[WatchEvent]:
        if op.lease and op.lease not in self._leases:
            raise LeaseExpiredError(op.lease, f"cannot put {op.key!r}: lease {op.lease:x} not found or expired")
        old = self._get_sync(op.key)
        kv = KeyValue(
            op.key,
            op.value,
            create_revision=old.create_revision if old else rev,
            mod_revision=rev,
            version=old.version + 1 if old else 1,
            lease=op.lease,
        )
        self._db.execute(
            f"INSERT OR REPLACE INTO kv ({_KV_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (kv.key.encode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        )
        return [WatchEvent("put", kv, rev)]

    def _apply_delete(self, op: Delete, rev: int) -> list[WatchEvent]:
        if op.prefix:
            keys = [r[0] for r in self._select_range(op.key.encode())]
        else:
            row = self._db.execute("SELECT key FROM kv WHERE key = ?", (op.key.encode(),)).fetchone()
            keys = [row[0]] if row else []
        return self._delete_keys(keys, rev)

    def _delete_keys(self, keys: list[bytes], rev: int) -> list[WatchEvent]:
        self._db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])
        return [WatchEvent("delete", KeyValue(k.decode(), b"", 0, rev, 0), rev) for k in keys]

    # -- history -----------------------------------------------------------------------------------------------

    def _trim_history(self) -> None:
        row = self._db.execute(
            "SELECT rev FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", (self._max_history,)
        ).fetchone()
        if row:
            self._compact_through(int(row[0]))

    async def compact(self, revision: int) -> None:
        """Drop the watch history of every revision before ``revision`` (as etcd's compact)."""
        self._check_open()
        self._compact_through(min(revision, self._revision + 1) - 1)

    def _compact_through(self, rev: int) -> None:
        if rev <= self._compacted_through:
            return
        with self._tx():
            self._db.execute("DELETE FROM events WHERE rev <= ?", (rev,))
            self._set_meta("compacted_through", rev)
        self._compacted_through = rev
        self._event_count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- watch -------------------------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        return self._watch(prefix.encode(), start_revision)

    async def _watch(self, start: bytes, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._check_open()
        self._expire_due()
        watcher = _Watcher(start, prefix_end(start) if start else b"\0")
        history: list[WatchEvent] = []
        if start_revision > 0:
            if start_revision <= self._compacted_through:
                raise CompactedError(start_revision, self._compacted_through + 1)
            rows = self._db.execute(
                "SELECT rev, type, key, value, create_rev, mod_rev, version, lease FROM events "
                "WHERE rev >= ? ORDER BY id",
                (start_revision,),
            )
            history = [_event(r) for r in rows if watcher.matches(r[2])]
            last = self._revision
        else:
            last = self._revision
        self._watchers.add(watcher)  # no await since the history read: nothing can be missed or doubled
        try:
            for ev in history:
                yield ev
            while True:
                item = await watcher.queue.get()
                if item is None:
                    return  # the store was closed
                if item.revision > last:
                    yield item
        finally:
            self._watchers.discard(watcher)

    def _publish(self, events: list[WatchEvent]) -> None:
        for w in self._watchers:
            for ev in events:
                if w.matches(ev.kv.key.encode()):
                    w.queue.put_nowait(ev)

    # -- leases ------------------------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> int:
        self._check_open()
        ttl = max(1, int(ttl_s))
        lease = self._next_lease
        with self._tx():
            self._db.execute("INSERT INTO leases (id, ttl) VALUES (?, ?)", (lease, ttl))
            self._set_meta("next_lease", lease + 1)
        self._next_lease = lease + 1
        self._leases[lease] = (ttl, self._now() + ttl)
        return lease

    async def refresh_lease(self, lease: int) -> int:
        self._check_open()
        self._expire_due()
        entry = self._leases.get(lease)
        if entry is None:
            raise LeaseExpiredError(lease)
        ttl = entry[0]
        self._leases[lease] = (ttl, self._now() + ttl)
        return ttl

    async def revoke_lease(self, lease: int) -> None:
        self._check_open()
        self._end_lease(lease)

    def _end_lease(self, lease: int) -> None:
        """Forget ``lease`` and delete its keys in one revision."""
        if self._leases.pop(lease, None) is None:
            return
        keys = [r[0] for r in self._db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))]
        self._commit([Delete(k.decode()) for k in keys], drop_lease=lease)

    def _expire_due(self) -> float | None:
        """End every lease past its deadline; returns the next deadline (None: no lease)."""
        now = self._now()
        for lease, (_, deadline) in list(self._leases.items()):
            if deadline <= now:
                self._end_lease(lease)
        return min((d for _, d in self._leases.values()), default=None)

    async def _reap_leases(self) -> None:
        while not self._closed:
            nxt = self._expire_due()
            delay = 0.5 if nxt is None else min(0.5, max(0.02, nxt - self._now()))
            await asyncio.sleep(delay)

    # -- status / close ----------------------------------------------------------------------------------------

    async def status(self) -> tuple[bool, int, str]:
        if self._closed:
            return False, self._revision, f"embedded store {self.path} is closed"
        return True, self._revision, f"embedded store {self.path} (single process)"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._watchers:
            w.queue.put_nowait(None)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._db.close()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _check_no_duplicate_keys(ops: Sequence[Put | Delete]) -> None:
    """etcd refuses a txn branch that puts one key twice, or puts a key it also deletes: so do we."""
    puts: set[str] = set()
    deletes = [op for op in ops if isinstance(op, Delete)]
    for op in ops:
        if not isinstance(op, Put):
            continue
        hit = op.key in puts or any(
            op.key == d.key or (d.prefix and op.key.encode().startswith(d.key.encode())) for d in deletes
        )
        if hit:
            raise StoreError(f"txn touches key {op.key!r} twice (put twice, or put and deleted); split the txn")
        puts.add(op.key)


def _kv(row: tuple[bytes, bytes, int, int, int, int]) -> KeyValue:
    return KeyValue(row[0].decode(), bytes(row[1]), row[2], row[3], row[4], row[5])


def _event_row(e: WatchEvent) -> tuple[int, int, bytes, bytes, int, int, int, int]:
    kind = _PUT if e.type == "put" else _DELETE
    kv = e.kv
    return (e.revision, kind, kv.key.encode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _event(row: tuple[int, int, bytes, bytes, int, int, int, int]) -> WatchEvent:
    kind: Literal["put", "delete"] = "put" if row[1] == _PUT else "delete"
    return WatchEvent(kind, KeyValue(row[2].decode(), bytes(row[3]), row[4], row[5], row[6], row[7]), row[0])
