"""Pricing sources: where the catalog's prices come from.

``DataFilePricing`` (the default, and what tests use) reads the dated JSON files shipped in this package.
A cloud pricing API (AWS Pricing ``GetProducts`` + ``DescribeSpotPriceHistory``, the GCP Cloud Billing Catalog,
the Azure Retail Prices API) plugs in as another ``PricingSource`` whose ``refresh()`` returns a fresh
``ProviderCatalog``; the autoscaler only ever sees the ``Catalog``. Live sources, by provider (``LIVE_SOURCES``,
made with ``live_pricing(provider, settings)``, imported on use so a cloud SDK loads only when asked for):

* ``azure``: ``AzureRetailPricing`` here (public Azure Retail Prices API, no credentials);
* ``aws``: ``providers/aws/pricing.py`` ``AwsPricing`` (Price List Query API + EC2 spot price history, boto3);
* ``gcp``: ``providers/gcp/pricing.py`` ``GcpBillingPricing`` (Cloud Billing Catalog API, an API key, urllib).

``build_catalog`` never fails because a live source did: it logs why and keeps that provider's dated data file.
See docs/architecture/autoscaler.md, "Refreshing prices".
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from gpufleet.common.errors import GpuFleetError, InvalidInputError, Problem
from gpufleet.coordinator.providers.catalog import (
    BUILTIN_PROVIDERS,
    Catalog,
    InstanceType,
    ProviderCatalog,
    RegionPrice,
    load_builtin,
    load_file,
)

log = logging.getLogger(__name__)


class PricingSource(Protocol):
    provider: str

    async def refresh(self) -> ProviderCatalog: ...


class DataFilePricing:
    """Prices from a data file: the built-in one for ``provider``, or ``path`` when given."""

    def __init__(self, provider: str, path: Path | None = None) -> None:
        self.provider = provider
        self.path = path

    async def refresh(self) -> ProviderCatalog:
        return load_file(self.path) if self.path is not None else load_builtin(self.provider)


async def build_catalog(sources: Iterable[PricingSource] | None = None) -> Catalog:
    """A ``Catalog`` from the given sources (default: every built-in data file).

    A live source that fails (a typed ``GpuFleetError`` such as ``ProviderUnavailableError``, or a network/parse
    error) is logged with the reason and replaced by its provider's built-in data file; only a data file that
    cannot be read is an error."""
    srcs = list(sources) if sources is not None else [DataFilePricing(p) for p in BUILTIN_PROVIDERS]
    catalogs: list[ProviderCatalog] = []
    for s in srcs:
        try:
            catalogs.append(await s.refresh())
        except (GpuFleetError, OSError, ValueError) as e:
            if isinstance(s, DataFilePricing) or s.provider not in BUILTIN_PROVIDERS:
                raise
            fallback = load_builtin(s.provider)
            log.warning(
                "pricing: refreshing %s prices from %s failed (%s: %s); keeping the data file dated %s",
                s.provider,
                type(s).__name__,
                type(e).__name__,
                e,
                fallback.as_of,
            )
            catalogs.append(fallback)
    return Catalog(catalogs)


class AzureRetailPricing:
    """Prices from the public Azure Retail Prices API (no credentials needed), for the types and regions of the
    built-in Azure catalog. Shapes (GPUs, vCPUs, memory) stay those of the data file; a type/region the API does
    not price keeps its data-file price. ``endpoint`` is configurable (tests use a loopback fake)."""

    provider = "azure"

    def __init__(
        self, endpoint: str = "https://prices.azure.com", base: ProviderCatalog | None = None, timeout_s: float = 20.0
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.base = base
        self.timeout_s = timeout_s

    def _fetch(self, sku: str, region: str) -> list[dict[str, object]]:
        query = urllib.parse.urlencode(
            {
                "$filter": f"serviceName eq 'Virtual Machines' and armSkuName eq '{sku}' and "
                f"armRegionName eq '{region}' and priceType eq 'Consumption'"
            }
        )
        url: str | None = f"{self.endpoint}/api/retail/prices?{query}"
        items: list[dict[str, object]] = []
        while url:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                page = json.loads(resp.read())
            items.extend(page.get("Items", []))
            url = page.get("NextPageLink") or None
        return items

    @staticmethod
    def _pick(items: list[dict[str, object]], spot: bool) -> int:
        for it in items:
            name = f"{it.get('meterName', '')} {it.get('skuName', '')}"
            if "Windows" in str(it.get("productName", "")) or "Low Priority" in name:
                continue
            if ("Spot" in name) == spot and str(it.get("unitOfMeasure", "")) == "1 Hour":
                return int(Decimal(str(it["retailPrice"])) * 1_000_000)
        return 0

    async def refresh(self) -> ProviderCatalog:
        base = self.base or load_builtin("azure")
        types: dict[str, InstanceType] = {}
        for t in base.types.values():
            prices = dict(t.prices)
            for region, old in t.prices.items():
                items = await asyncio.to_thread(self._fetch, t.name, region)
                on_demand, spot = self._pick(items, False), self._pick(items, True)
                prices[region] = RegionPrice(on_demand or old.on_demand_micros, spot or old.spot_micros)
            types[t.name] = replace(t, prices=prices)
        today = datetime.now(UTC).date().isoformat()
        return ProviderCatalog(base.provider, today, f"Azure Retail Prices API ({self.endpoint})", base.regions, types)


def _azure(settings: dict[str, Any]) -> AzureRetailPricing:
    return AzureRetailPricing(endpoint=str(settings.get("endpoint", "https://prices.azure.com")))


#: provider -> "module:function" taking that provider's pricing settings mapping and returning a PricingSource
LIVE_SOURCES: dict[str, str] = {
    "azure": f"{__name__}:_azure",
    "aws": "gpufleet.coordinator.providers.aws.pricing:create_pricing",
    "gcp": "gpufleet.coordinator.providers.gcp.pricing:create_pricing",
}


def live_pricing(provider: str, settings: dict[str, Any] | None = None) -> PricingSource:
    """The live pricing source for ``provider`` (its module imported now, not before)."""
    entry = LIVE_SOURCES.get(provider)
    if entry is None:
        raise InvalidInputError(
            Problem("pricing.provider", f"no live pricing for {provider!r}; known: {', '.join(LIVE_SOURCES)}")
        )
    module_name, func = entry.split(":")
    source: PricingSource = getattr(importlib.import_module(module_name), func)(dict(settings or {}))
    return source
