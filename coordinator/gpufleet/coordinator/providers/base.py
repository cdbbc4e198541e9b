"""The ``CloudProvider`` contract every cloud (and the fake and static providers) implements.

Assumptions every implementation keeps (and ``tests/contract/test_providers.py`` checks for each one):

1. **Idempotent launch.** ``launch(request)`` carries ``request.token``. Calling it again with the same token
   (a retry after a timeout, a new leader re-running a step) never creates more than ``request.count``
   instances: AWS passes it as ``ClientToken``, GCP derives instance names and ``requestId`` from it, Azure
   derives deterministic VM names from it. The second call returns the instances of the first.
2. **Ours by tag.** Every instance carries :data:`TAG_MANAGED` = ``"true"`` plus ``request.tags`` (pool, token,
   cluster). ``list_instances(tags)`` returns only instances carrying all of ``tags`` (and the managed tag), in
   any state but gone; terminated instances may linger in the listing with ``state == "terminated"``.
3. **Typed errors drive the next choice, not a retry loop.** A launch that cannot be served raises
   :class:`~gpufleet.common.errors.InsufficientCapacityError` (no capacity for that type/zone/market) or
   :class:`~gpufleet.common.errors.QuotaExceededError` (account limit); the autoscaler moves to the next-cheapest
   option and backs off this one. :class:`~gpufleet.common.errors.ProviderUnavailableError` is transient (the
   ``retrying`` decorator retries it); :class:`~gpufleet.common.errors.InvalidInputError` means our request was
   wrong (unknown instance type) and is never retried. Vendor exceptions never escape a provider: each cloud maps
   them in its ``errors.py`` with one table.
4. **Terminate is idempotent.** Terminating an instance that is already gone (or that the cloud no longer knows)
   is not an error: the cloud's not-found answer is mapped to
   :class:`~gpufleet.common.errors.InstanceNotFoundError` in ``errors.py`` and ``terminate`` treats it as done.
5. **No provider-name branches** in shared code: ask :meth:`CloudProvider.capabilities`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: tag/label keys gpufleet puts on every instance (lower-case, dash-free for GCP label rules)
TAG_MANAGED = "gpufleet-managed"
TAG_POOL = "gpufleet-pool"
TAG_TOKEN = "gpufleet-token"
TAG_CLUSTER = "gpufleet-cluster"
TAG_NODE = "gpufleet-node"


class Capability(enum.StrEnum):
    """What a provider can do; shared code asks these instead of testing a provider's name."""

    SPOT = "spot"  # can launch spot / preemptible capacity
    IDEMPOTENT_LAUNCH = "idempotent-launch"  # a launch token deduplicates retried launches
    PROVISIONS = "provisions"  # creates machines (static hosts do not)
    INTERRUPTION_NOTICE = "interruption-notice"  # spot instances get an advance notice the agent can watch
    MAX_PRICE = "max-price"  # accepts a max spot price
    LOCAL_PROCESSES = "local-processes"  # "instances" are local agent processes (fake provider)


class InstanceState(enum.StrEnum):
    """A provider's view of one instance, normalised across clouds."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """One launch: ``count`` instances of one type in one region/zone and market.

    ``token`` makes the call idempotent (see the module docstring); use a fresh token per intended launch and the
    SAME token on every retry of it. ``user_data`` is the cloud-init document (plain text; providers encode it
    as their API needs). ``max_price_micros`` caps a spot price (0 = on-demand price cap, the default).
    """

    instance_type: str
    region: str
    token: str
    count: int = 1
    spot: bool = False
    zone: str = ""
    user_data: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    max_price_micros: int = 0
    node_names: Sequence[str] = ()  # desired agent names, one per instance (the fake provider uses them)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"LaunchRequest.count must be >= 1, got {self.count}")
        if not self.token:
            raise ValueError("LaunchRequest.token must be set (it makes the launch idempotent)")


@dataclass(frozen=True, slots=True)
class ProviderInstance:
    """One instance as the provider reports it."""

    cloud_id: str
    provider: str
    instance_type: str
    region: str
    zone: str
    spot: bool
    state: InstanceState
    tags: Mapping[str, str]
    launched_ms: int = 0
    private_ip: str = ""


@runtime_checkable
class CloudProvider(Protocol):
    """Launch, list and terminate machines in one cloud account. See the module docstring for the rules."""

    name: str

    def capabilities(self) -> frozenset[Capability]: ...

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]: ...

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]: ...

    async def terminate(self, cloud_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def token_names(token: str, count: int, prefix: str = "gf", max_len: int = 63) -> list[str]:
    """Deterministic, DNS-safe instance names derived from a launch token: the same token gives the same names.

    GCP and Azure reject a second create of an existing name, which is what makes their launches idempotent.
    """
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    names = [f"{prefix}-{digest}-{i}" for i in range(count)]
    for n in names:
        if len(n) > max_len:
            raise ValueError(f"instance name {n!r} longer than {max_len}")
    return names


def matches_tags(instance_tags: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    if instance_tags.get(TAG_MANAGED) != "true":
        return False
    return all(instance_tags.get(k) == v for k, v in (wanted or {}).items())


def managed_tags(request: LaunchRequest) -> dict[str, str]:
    tags = {TAG_MANAGED: "true", TAG_TOKEN: _label_safe(request.token)}
    tags.update(request.tags)
    return tags


def _label_safe(value: str) -> str:
    """GCP label values: lower-case letters, digits, ``-`` and ``_``, at most 63 chars."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())
    return out[:63]
