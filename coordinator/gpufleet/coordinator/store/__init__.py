"""The coordinator's cluster store: the ``ClusterStore`` contract (base.py), its etcd and embedded
implementations, and ``open_store(url, state_dir)`` to pick one from a ``--store`` URL."""

from .base import (
    ClusterStore,
    CompactedError,
    Compare,
    Delete,
    KeyValue,
    LeaseExpiredError,
    Put,
    RevisionConflictError,
    StoreError,
    StoreUnavailableError,
    TxnResult,
    WatchEvent,
)
from .registry import StoreUrl, open_store, parse_store_url

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
    "StoreUrl",
    "TxnResult",
    "WatchEvent",
    "open_store",
    "parse_store_url",
]
