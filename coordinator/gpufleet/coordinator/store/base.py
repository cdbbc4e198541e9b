"""The ``ClusterStore`` contract: etcd-like key/value records, transactions, watches and leases.

Both implementations (``EtcdStore`` in ``etcd.py``, ``EmbeddedStore`` in ``embedded.py``) follow these rules,
and ``tests/contract/test_store_contract.py`` checks them against both:

* Keys are ``str`` (``/gpufleet/...``), compared and sorted as UTF-8 bytes; values are ``bytes`` (serialized
  protobuf, the caller serializes).
* There is one global revision counter. Every write (``put``, ``delete`` that removed something, ``txn`` whose
  chosen branch changed something) bumps it by exactly one; all changes of one txn share that revision.
  ``KeyValue.create_revision`` is the revision that created the key, ``mod_revision`` the last one that changed
  it, ``version`` counts puts since creation (1 after creation). A key that does not exist compares as
  ``version == 0``, ``create == 0``, ``mod == 0``; a ``value`` compare on an absent key is always false.
* ``watch(prefix, start_revision)`` yields every change under ``prefix`` with ``revision >= start_revision``
  (0: only changes after the call) in revision order, resumes by itself after a lost connection, and raises
  :class:`CompactedError` when the history it needs has been compacted: the caller re-lists and watches again.
* A lease (``grant_lease``) ends after ``ttl_s`` seconds without ``refresh_lease``; then every key put with it is
  deleted (a watch sees ``delete`` events). ``refresh_lease`` on an ended lease raises
  :class:`LeaseExpiredError`; so does a ``put`` with an unknown lease.
* Store-side failures surface only as :class:`~gpufleet.common.errors.StoreError` subclasses; vendor errors are
  mapped at the implementation's edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gpufleet.common.errors import RevisionConflictError, StoreError, StoreUnavailableError

__all__ = [
    "ClusterStore",
    "CompactedError",
    "Compare",
    "Delete",
    "KeyValue",
    "LeaseExpiredError",
    "Put",
    "RevisionConflictError",
    "StoreError",
    "StoreUnavailableError",
    "TxnResult",
    "WatchEvent",
    "compare_holds",
    "prefix_end",
]


class CompactedError(StoreError):
    """The watch history needed (``revision``) is gone; re-list the prefix and watch from the list revision."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(
            f"store history before revision {compact_revision} was compacted; cannot watch from {revision}: "
            "re-list and watch from the listed revision"
        )


class LeaseExpiredError(StoreError):
    """The lease does not exist any more (expired, revoked, or never granted)."""

    def __init__(self, lease: int, message: str = "") -> None:
        self.lease = lease
        super().__init__(message or f"lease {lease:x} has expired or was revoked")


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn condition: ``<target of key> <op> <value>``."""

    key: str
    target: Literal["value", "version", "create", "mod"]
    op: Literal["==", "!=", "<", ">"]
    value: bytes | int  # bytes for "value", int otherwise (version 0 / create 0 == key absent)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue  # kv.value is empty on delete; kv.mod_revision == revision
    revision: int


@runtime_checkable
class ClusterStore(Protocol):
    kind: str  # "etcd" | "embedded"
    endpoints: list[str]

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` (``""``: all), sorted by key, and the store revision read at."""
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the new store revision."""
        ...

    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it with ``prefix=True``); returns how many were deleted."""
        ...

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult: ...

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]: ...

    async def grant_lease(self, ttl_s: int) -> int: ...

    async def refresh_lease(self, lease: int) -> int:
        """Keep ``lease`` alive for another TTL; returns the TTL. Raises LeaseExpiredError if it is gone."""
        ...

    async def revoke_lease(self, lease: int) -> None: ...

    async def status(self) -> tuple[bool, int, str]:
        """(healthy, current revision, human message). Never raises for an unreachable store."""
        ...

    async def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The first byte string after every key starting with ``prefix`` (etcd's range_end); b"\\0" = no end."""
    buf = bytearray(prefix)
    for i in reversed(range(len(buf))):
        if buf[i] < 0xFF:
            buf[i] += 1
            return bytes(buf[: i + 1])
    return b"\0"


def compare_holds(cmp: Compare, kv: KeyValue | None) -> bool:
    """Evaluate one compare against the current record (``None``: the key is absent), as etcd does."""
    if cmp.target == "value":
        if kv is None:
            return False  # etcd: a value compare on a missing key always fails
        if not isinstance(cmp.value, bytes):
            raise TypeError(f"Compare(target='value') on {cmp.key!r} needs bytes, got {type(cmp.value).__name__}")
        left_b, right_b = kv.value, cmp.value
        return _apply(cmp.op, left_b, right_b)
    if isinstance(cmp.value, bytes):
        raise TypeError(f"Compare(target={cmp.target!r}) on {cmp.key!r} needs an int, got bytes")
    if kv is None:
        left = 0
    elif cmp.target == "version":
        left = kv.version
    elif cmp.target == "create":
        left = kv.create_revision
    else:
        left = kv.mod_revision
    return _apply(cmp.op, left, cmp.value)


def _apply(op: str, left: bytes | int, right: bytes | int) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right  # type: ignore[operator]
    if op == ">":
        return left > right  # type: ignore[operator]
    raise ValueError(f"unknown compare op {op!r}; use one of ==, !=, <, >")
