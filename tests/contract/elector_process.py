"""A coordinator-like process for election tests: runs a LeaderElector on etcd and, while it leads, makes a
fenced write every 50 ms. Prints one line per transition so the test can follow it.

    python -m tests.contract.elector_process ENDPOINT IDENTITY TTL_S WRITE_PREFIX
"""

from __future__ import annotations

import asyncio
import sys

from gpufleet.common.errors import NotLeaderError, StoreError
from gpufleet.coordinator.leadership import LeaderElector
from gpufleet.coordinator.store import Put
from gpufleet.coordinator.store.etcd import EtcdStore


async def main(endpoint: str, identity: str, ttl_s: int, prefix: str) -> None:
    store = EtcdStore([endpoint])
    elector = LeaderElector(store, identity=identity, address=f"{identity}:7000", ttl_s=ttl_s)
    run = asyncio.create_task(elector.run())
    n = 0
    was_leader = False
    while not run.done():
        if elector.is_leader != was_leader:
            was_leader = elector.is_leader
            print("LEADER" if was_leader else "FOLLOWER", flush=True)
        if elector.is_leader:
            n += 1
            try:
                await elector.leader_txn([Put(f"{prefix}{identity}/{n:06d}", b"")])
            except NotLeaderError:
                print("FENCED", flush=True)
            except StoreError as e:
                print(f"STORE-ERROR {e}", flush=True)
        await asyncio.sleep(0.05)
    run.result()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
