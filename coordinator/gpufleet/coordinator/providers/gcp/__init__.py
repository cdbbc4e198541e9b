"""GCP Compute Engine provider package. See providers/base.py; only client.py imports google-cloud-compute."""

from __future__ import annotations

from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.providers.gcp.client import GcpClientSettings
from gpufleet.coordinator.providers.gcp.provider import GcpProvider, GcpRegionSettings

__all__ = ["GcpClientSettings", "GcpProvider", "GcpRegionSettings", "create"]


def create(settings: dict[str, Any]) -> GcpProvider:
    """Registry factory. Settings: ``project``, ``regions: {name: {zones: [...], image, network, ...}}``,
    optional ``api_endpoint``."""
    regions_raw = settings.get("regions")
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise InvalidInputError(Problem("providers.gcp.regions", "a mapping of region -> {zones: [...]}"))
    regions = {}
    for name, r in regions_raw.items():
        zones = tuple(r.get("zones", ()))
        if not zones:
            raise InvalidInputError(Problem(f"providers.gcp.regions.{name}.zones", "list at least one zone"))
        regions[name] = GcpRegionSettings(zones=zones, **{k: v for k, v in r.items() if k != "zones"})
    client = GcpClientSettings(api_endpoint=settings.get("api_endpoint"))
    return GcpProvider(str(settings.get("project", "")), regions, client)
