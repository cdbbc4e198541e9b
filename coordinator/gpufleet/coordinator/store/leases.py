"""``LeaseKeeper``: keeps one store lease alive in the background and knows until when it surely lives.

``deadline`` is the send time of the last successful refresh plus the TTL (the server counts from when it got
the refresh, which is later, so our view errs on the safe side). ``run()`` refreshes every ``ttl/3`` and
returns only by raising ``LeaseExpiredError``: the server says the lease is gone, or the deadline passed
without a successful refresh (store unreachable, or this process was paused).
"""

from __future__ import annotations

import asyncio
import logging

from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import StoreUnavailableError

from .base import ClusterStore, LeaseExpiredError

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        store: ClusterStore,
        lease: int,
        ttl_s: float,
        *,
        clock: Clock | None = None,
        granted_at: float | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.ttl_s = float(ttl_s)
        self.clock = clock or SystemClock()
        start = self.clock.monotonic() if granted_at is None else granted_at
        self.deadline = start + self.ttl_s
        self.interval_s = max(0.1, self.ttl_s / 3)

    def alive(self) -> bool:
        """True while the lease is surely alive (a local check, no store call)."""
        return self.clock.monotonic() < self.deadline

    def remaining_s(self) -> float:
        return self.deadline - self.clock.monotonic()

    async def refresh_once(self) -> None:
        """One refresh; raises LeaseExpiredError if the lease is (or may be) gone."""
        if not self.alive():
            raise LeaseExpiredError(self.lease, f"lease {self.lease:x} outlived its TTL without a refresh")
        sent = self.clock.monotonic()
        try:
            async with asyncio.timeout(max(0.1, self.remaining_s())):  # not wait_for: on 3.11 it can swallow a cancel
                await self.store.refresh_lease(self.lease)
        except (StoreUnavailableError, TimeoutError) as e:
            if not self.alive():
                raise LeaseExpiredError(self.lease, f"lease {self.lease:x} could not be refreshed in time: {e}") from e
            log.warning("refreshing lease %x failed (%s); %.1fs left", self.lease, e, self.remaining_s())
            return
        self.deadline = max(self.deadline, sent + self.ttl_s)

    async def run(self) -> None:
        """Refresh until the lease is lost; then raise LeaseExpiredError."""
        while True:
            # after a failed refresh, retry sooner, but never later than just before the deadline
            await asyncio.sleep(max(0.05, min(self.interval_s, self.remaining_s() / 2)))
            await self.refresh_once()
