"""EmbeddedStore specifics beyond the shared contract: durability, the single-process lock, history trimming,
and the ``--store`` URL forms of ``open_store``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.common.errors import InvalidInputError, StoreUnavailableError
from gpufleet.coordinator.store import CompactedError, StoreUrl, open_store, parse_store_url
from gpufleet.coordinator.store.embedded import EmbeddedStore


async def test_data_revision_and_leases_survive_reopen(tmp_path: Path) -> None:
    s = open_store("embedded", tmp_path)
    lease = await s.grant_lease(30)
    await s.put("/gpufleet/a", b"1")
    rev = await s.put("/gpufleet/owned", b"2", lease=lease)
    await s.close()

    s2 = open_store("embedded", tmp_path)
    try:
        kvs, rev2 = await s2.range("/gpufleet/")
        assert rev2 == rev
        assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [
            ("/gpufleet/a", b"1", 0),
            ("/gpufleet/owned", b"2", lease),
        ]
        assert await s2.refresh_lease(lease) == 30  # the lease is still known and gets a full TTL again
        assert await s2.put("/gpufleet/a", b"3") == rev + 1
        assert await s2.grant_lease(5) != lease
    finally:
        await s2.close()


async def test_second_opener_in_same_process_is_refused(tmp_path: Path) -> None:
    s = open_store("embedded", tmp_path)
    try:
        with pytest.raises(StoreUnavailableError, match=r"in use by another process.*etcd://"):
            open_store("embedded", tmp_path)
    finally:
        await s.close()
    s3 = open_store("embedded", tmp_path)  # free again after close
    await s3.close()


async def test_second_process_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    s = open_store("embedded", tmp_path)
    try:
        code = (
            "import sys; from pathlib import Path; from gpufleet.coordinator.store import open_store\n"
            "try:\n    open_store('embedded', Path(sys.argv[1]))\n"
            "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 3, proc.stderr
        assert "StoreUnavailableError" in proc.stdout and "in use by another process" in proc.stdout
    finally:
        await s.close()


async def test_history_is_trimmed_by_size(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "s.db", max_history=20)
    try:
        first = await s.put("/k", b"0")
        for i in range(60):
            last = await s.put("/k", str(i).encode())
        with pytest.raises(CompactedError) as err:
            async for _ in s.watch("/k", start_revision=first):
                break
        assert err.value.compact_revision > first
        got = []
        async with asyncio.timeout(5):
            async for ev in s.watch("/k", start_revision=last - 10):
                got.append(ev.revision)
                if len(got) == 11:
                    break
        assert got == list(range(last - 10, last + 1))
    finally:
        await s.close()


async def test_closing_the_store_ends_its_watches(tmp_path: Path) -> None:
    s = open_store("embedded", tmp_path)
    events = []

    async def consume() -> None:
        async for ev in s.watch("/"):
            events.append(ev)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    await s.put("/x", b"")
    await asyncio.sleep(0.05)
    await s.close()
    await asyncio.wait_for(task, 5)
    assert [e.kv.key for e in events] == ["/x"]
    with pytest.raises(StoreUnavailableError, match="closed"):
        await s.get("/x")


def test_store_url_forms(tmp_path: Path) -> None:
    assert parse_store_url("embedded") == StoreUrl("embedded")
    assert parse_store_url("embedded:///var/lib/g/s.db") == StoreUrl("embedded", path=Path("/var/lib/g/s.db"))
    assert parse_store_url("etcd://h1:2379,h2:2380,h3") == StoreUrl("etcd", endpoints=("h1:2379", "h2:2380", "h3:2379"))
    assert parse_store_url("etcd://[::1]:2379").endpoints == ("[::1]:2379",)
    store = open_store(f"embedded://{tmp_path}/sub/x.db", tmp_path)
    assert isinstance(store, EmbeddedStore) and store.path == tmp_path / "sub" / "x.db" and store.kind == "embedded"
    asyncio.run(store.close())


@pytest.mark.parametrize(
    "url",
    [
        "",
        "etcd://",
        "etcd://h1:notaport",
        "etcd://:2379",
        "etcd://h1:99999",
        "embedded://rel/path",
        "redis://x",
        "mysql",
    ],
)
def test_bad_store_url_names_the_flag_and_the_valid_forms(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        open_store(url, tmp_path)
    assert err.value.problems[0].field == "--store"
    assert "etcd://host1:2379" in str(err.value) and "embedded" in str(err.value)
