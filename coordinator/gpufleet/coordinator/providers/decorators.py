"""Cross-cutting concerns wrapped around any ``CloudProvider``: metrics and retries of transient errors.

Concrete providers hold no metrics code and no retry loops (Karpenter's decorators). ``retrying`` retries only
:class:`~gpufleet.common.errors.ProviderUnavailableError`; capacity, quota, not-found and invalid-input errors go
straight to the caller, which picks another option. Retrying a launch is safe because launches carry a token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import Counter, Histogram

from gpufleet.common.errors import GpuFleetError, ProviderUnavailableError
from gpufleet.common.retry import RetryPolicy, retry_async
from gpufleet.coordinator.providers.base import Capability, CloudProvider, LaunchRequest, ProviderInstance

T = TypeVar("T")

PROVIDER_CALLS = Counter(
    "gpufleet_provider_calls_total",
    "Cloud provider calls by provider, operation and outcome",
    ["provider", "op", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "gpufleet_provider_call_seconds",
    "Cloud provider call latency",
    ["provider", "op"],
    buckets=(0.05, 0.2, 1, 5, 30, 120),
)

#: the default policy for transient cloud errors: a handful of attempts, then let the reconciler try next loop
DEFAULT_PROVIDER_RETRY = RetryPolicy(initial_s=0.2, multiplier=2.0, max_interval_s=5.0, max_attempts=4)


class _Wrapper:
    def __init__(self, inner: CloudProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities()

    async def close(self) -> None:
        await self.inner.close()


class MeteredProvider(_Wrapper):
    """Counts calls by outcome (``ok`` or the error class name) and records latency."""

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        start = time.monotonic()
        try:
            result = await fn()
        except GpuFleetError as e:
            PROVIDER_CALLS.labels(self.name, op, type(e).__name__).inc()
            raise
        finally:
            PROVIDER_LATENCY.labels(self.name, op).observe(time.monotonic() - start)
        PROVIDER_CALLS.labels(self.name, op, "ok").inc()
        return result

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        return await self._call("launch", lambda: self.inner.launch(request))

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        return await self._call("list", lambda: self.inner.list_instances(tags))

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        await self._call("terminate", lambda: self.inner.terminate(cloud_ids))


class RetryingProvider(_Wrapper):
    """Retries transient errors (``ProviderUnavailableError``) under one ``RetryPolicy``."""

    def __init__(self, inner: CloudProvider, policy: RetryPolicy = DEFAULT_PROVIDER_RETRY) -> None:
        super().__init__(inner)
        self.policy = policy

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        return await retry_async(self.policy, lambda: self.inner.launch(request), retry_on=(ProviderUnavailableError,))

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        return await retry_async(
            self.policy, lambda: self.inner.list_instances(tags), retry_on=(ProviderUnavailableError,)
        )

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        await retry_async(self.policy, lambda: self.inner.terminate(cloud_ids), retry_on=(ProviderUnavailableError,))


def metered(provider: CloudProvider) -> CloudProvider:
    return MeteredProvider(provider)


def retrying(provider: CloudProvider, policy: RetryPolicy = DEFAULT_PROVIDER_RETRY) -> CloudProvider:
    return RetryingProvider(provider, policy)
