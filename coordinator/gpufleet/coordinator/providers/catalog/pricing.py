"""Pricing sources: where the catalog's prices come from.

``DataFilePricing`` (the default, and what tests use) reads the dated JSON files shipped in this package.
A cloud pricing API (AWS Pricing ``GetProducts`` + ``DescribeSpotPriceHistory``, the GCP Cloud Billing Catalog,
the Azure Retail Prices API) plugs in as another ``PricingSource`` whose ``refresh()`` returns a fresh
``ProviderCatalog``; the autoscaler only ever sees the ``Catalog``. moto has no pricing API, so no such source
ships yet: the gap is documented in docs/architecture/autoscaler.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from gpufleet.coordinator.providers.catalog import BUILTIN_PROVIDERS, Catalog, ProviderCatalog, load_builtin, load_file


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
    """A ``Catalog`` from the given sources (default: every built-in data file)."""
    srcs = list(sources) if sources is not None else [DataFilePricing(p) for p in BUILTIN_PROVIDERS]
    return Catalog([await s.refresh() for s in srcs])
