"""Azure virtual machines provider package. See providers/base.py; only client.py imports the Azure SDK."""

from __future__ import annotations

from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.providers.azure.client import AzureClientSettings
from gpufleet.coordinator.providers.azure.provider import AzureProvider, AzureRegionSettings

__all__ = ["AzureClientSettings", "AzureProvider", "AzureRegionSettings", "create"]


def create(settings: dict[str, Any]) -> AzureProvider:
    """Registry factory. Settings: ``subscription_id``, ``resource_group``,
    ``regions: {name: {subnet_id, image: {publisher, offer, sku, version}, zones}}``, optional ``base_url``."""
    regions_raw = settings.get("regions")
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise InvalidInputError(Problem("providers.azure.regions", "a mapping of region -> {subnet_id, image}"))
    regions = {}
    for name, r in regions_raw.items():
        for key in ("subnet_id", "image"):
            if key not in r:
                raise InvalidInputError(Problem(f"providers.azure.regions.{name}.{key}", "required"))
        regions[name] = AzureRegionSettings(
            subnet_id=r["subnet_id"], image=dict(r["image"]), zones=tuple(r.get("zones", ()))
        )
    client = AzureClientSettings(base_url=settings.get("base_url"))
    return AzureProvider(
        str(settings.get("subscription_id", "")), str(settings.get("resource_group", "")), regions, client
    )
