"""``StaticProvider``: on-prem hosts that exist already and are never provisioned. See providers/base.py.

The hosts are listed in configuration; ``list_instances`` reports them as running and ``launch`` always raises
``InsufficientCapacityError`` (there is nothing to buy), so the planner never counts on it. ``terminate`` does
not power anything off: it records that the host was released, and the host is listed again only after
``restore``. Capabilities are empty: no spot, no provisioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpufleet.common.errors import InstanceNotFoundError, InsufficientCapacityError
from gpufleet.coordinator.providers.base import (
    TAG_MANAGED,
    TAG_NODE,
    Capability,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
    matches_tags,
)


@dataclass(frozen=True, slots=True)
class StaticHost:
    name: str  # the agent's node name
    address: str = ""
    region: str = "onprem"
    instance_type: str = "static"
    tags: Mapping[str, str] = field(default_factory=dict)


class StaticProvider:
    name = "static"

    def __init__(self, hosts: Sequence[StaticHost]) -> None:
        self._hosts = {h.name: h for h in hosts}
        self._released: set[str] = set()

    def capabilities(self) -> frozenset[Capability]:
        return frozenset()

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        raise InsufficientCapacityError(f"static provider cannot provision {request.instance_type}: hosts are fixed")

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        out = []
        for h in self._hosts.values():
            state = InstanceState.TERMINATED if h.name in self._released else InstanceState.RUNNING
            all_tags = {TAG_MANAGED: "true", TAG_NODE: h.name, **h.tags}
            if matches_tags(all_tags, tags):
                out.append(
                    ProviderInstance(
                        h.name, self.name, h.instance_type, h.region, "", False, state, all_tags, 0, h.address
                    )
                )
        return out

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        for cid in cloud_ids:
            if cid not in self._hosts:
                raise InstanceNotFoundError(f"static host {cid!r} is not configured")
            self._released.add(cid)

    def restore(self, name: str) -> None:
        self._released.discard(name)

    async def close(self) -> None:
        return None


def create(settings: dict[str, object]) -> StaticProvider:
    """Registry factory. Settings: ``hosts``: a list of ``{name, address, region, instance_type}`` mappings."""
    raw = settings.get("hosts", [])
    if not isinstance(raw, list):
        raise TypeError("static provider: 'hosts' must be a list of host mappings")
    return StaticProvider([StaticHost(**h) for h in raw])
