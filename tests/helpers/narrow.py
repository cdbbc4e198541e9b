"""Explicit narrowing for tests: fail with a message naming what was missing instead of a bare AttributeError
on None (and without ``type: ignore``)."""

from __future__ import annotations

from gpufleet.coordinator.leadership import LeaderElector, LeaderInfo
from gpufleet.coordinator.store import ClusterStore


def leader_of(elector: LeaderElector) -> LeaderInfo:
    """The leader ``elector`` currently knows of."""
    info = elector.leader
    assert info is not None, f"replica {elector.identity} knows of no leader"
    return info


async def value_at(store: ClusterStore, key: str) -> bytes:
    """The value stored at ``key``."""
    kv = await store.get(key)
    assert kv is not None, f"{key} is not in the store"
    return kv.value
