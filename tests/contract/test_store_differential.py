"""Differential check: the same random operation sequences on the embedded store and on a real etcd must give
the same answers (return values, records, revisions relative to the start). etcd is the reference."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.coordinator.store import ClusterStore, Compare, Delete, Put, open_store
from tests.helpers.etcd_server import EtcdServer

pytestmark = pytest.mark.timeout(60)
KEYS = ["a", "a/b", "a/c", "ab", "b"]
VALUES = [b"", b"x", b"y", b"zz"]
TARGETS = ["value", "version", "create", "mod"]
OPS = ["==", "!=", "<", ">"]


@pytest.fixture
async def stores(etcd_server: EtcdServer, tmp_path: Path) -> AsyncIterator[tuple[ClusterStore, ClusterStore]]:
    etcd = open_store(etcd_server.url, tmp_path)
    embedded = open_store("embedded", tmp_path)
    try:
        yield etcd, embedded
    finally:
        await etcd.close()
        await embedded.close()


def random_ops(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for _ in range(n):
        kind = rng.choice(["put", "put", "delete", "txn", "txn"])
        if kind == "put":
            out.append(("put", (rng.choice(KEYS), rng.choice(VALUES))))
        elif kind == "delete":
            out.append(("delete", (rng.choice(KEYS), rng.random() < 0.3)))
        else:
            compares = []
            for _ in range(rng.randint(0, 2)):
                target = rng.choice(TARGETS)
                value: Any = rng.choice(VALUES) if target == "value" else rng.randint(0, 4)
                compares.append((rng.choice(KEYS), target, rng.choice(OPS), value))
            branches = []
            for _ in range(2):
                keys = rng.sample(KEYS, rng.randint(0, 2))  # distinct keys: a txn may touch a key once
                branches.append([("put", k, rng.choice(VALUES)) if rng.random() < 0.7 else ("del", k) for k in keys])
            out.append(("txn", (compares, branches[0], branches[1])))
    return out


async def run(store: ClusterStore, prefix: str, ops: list[tuple[str, Any]]) -> list[Any]:
    _, base = await store.range(prefix)

    def rel(rev: int) -> int:
        return rev - base if rev else 0

    def to_op(spec: tuple[Any, ...]) -> Put | Delete:
        return Put(prefix + spec[1], spec[2]) if spec[0] == "put" else Delete(prefix + spec[1])

    trace: list[Any] = []
    for kind, args in ops:
        if kind == "put":
            trace.append(("put", rel(await store.put(prefix + args[0], args[1]))))
        elif kind == "delete":
            trace.append(("delete", await store.delete(prefix + args[0], prefix=args[1])))
        else:
            compares = [
                Compare(prefix + k, t, op, v if t in ("value", "version") else (base + v if v else 0))
                for k, t, op, v in args[0]
            ]
            res = await store.txn(compares, [to_op(s) for s in args[1]], [to_op(s) for s in args[2]])
            trace.append(("txn", res.succeeded, rel(res.revision)))
        kvs, rev = await store.range(prefix)
        trace.append(
            (
                rel(rev),
                [(kv.key, kv.value, rel(kv.create_revision), rel(kv.mod_revision), kv.version) for kv in kvs],
            )
        )
    # the whole history replayed by a watch: same events, same order
    end = await store.put(prefix + "~end", b"")  # a last event of its own, so we know where history ends
    events = []
    async with asyncio.timeout(10):
        async for ev in store.watch(prefix, start_revision=base + 1):
            if ev.revision == end:
                break
            kv = ev.kv
            events.append((ev.type, kv.key, kv.value, rel(ev.revision), rel(kv.create_revision), kv.version))
    trace.append(events)
    return trace


@pytest.mark.parametrize("seed", range(6))
async def test_embedded_matches_etcd(stores: tuple[ClusterStore, ClusterStore], seed: int) -> None:
    rng = random.Random(seed)
    ops = random_ops(rng, 40)
    prefix = f"/diff/{seed}/"
    etcd, embedded = stores
    assert await run(embedded, prefix, ops) == await run(etcd, prefix, ops)
