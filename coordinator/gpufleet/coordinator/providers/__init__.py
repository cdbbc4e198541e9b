"""Cloud providers behind one contract (base.py): AWS, GCP, Azure, a fake cloud and static on-prem hosts.

Only each cloud's ``client.py`` imports its SDK, lazily; the registry imports a provider package on first use.
See docs/architecture/autoscaler.md and docs/checklists/new-cloud-provider.md.
"""

from gpufleet.coordinator.providers.base import (
    Capability,
    CloudProvider,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
)
from gpufleet.coordinator.providers.registry import ProviderRegistry, create_provider

__all__ = [
    "Capability",
    "CloudProvider",
    "InstanceState",
    "LaunchRequest",
    "ProviderInstance",
    "ProviderRegistry",
    "create_provider",
]
