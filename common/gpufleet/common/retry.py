"""One retry policy and one way to retry, for every caller (RPCs, store calls, cloud calls)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 0.1
    multiplier: float = 1.5
    max_interval_s: float = 5.0
    jitter: float = 0.2  # +/- fraction of each interval
    max_elapsed_s: float | None = None  # None: retry forever
    max_attempts: int | None = None

    def delays(self) -> Iterator[float]:
        """Successive sleep intervals, with jitter, forever."""
        interval = self.initial_s
        while True:
            yield max(0.0, interval * (1 + random.uniform(-self.jitter, self.jitter)))
            interval = min(self.max_interval_s, interval * self.multiplier)


async def retry_async(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
) -> T:
    """Call ``fn`` until it succeeds, retrying only ``retry_on`` errors within the policy's limits."""
    start = time.monotonic()
    for attempts, delay in enumerate(policy.delays(), start=1):
        try:
            return await fn()
        except retry_on:
            if policy.max_attempts is not None and attempts >= policy.max_attempts:
                raise
            if policy.max_elapsed_s is not None and time.monotonic() - start + delay > policy.max_elapsed_s:
                raise
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")
