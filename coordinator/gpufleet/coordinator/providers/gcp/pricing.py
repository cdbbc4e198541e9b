"""Live GCP prices from the Cloud Billing Catalog API, as a ``PricingSource``.

``GET {endpoint}/v1/services/6F81-5844-456A/skus?currencyCode=USD&key=...&pageToken=...`` (Compute Engine's
service id) lists every SKU, paged by ``nextPageToken``. GCE bills a GPU machine by component, so an instance's
hourly price is built from three SKU prices per region and market (``category.usageType`` ``OnDemand`` or
``Preemptible``, i.e. spot; commitments are ignored), for the shape in the built-in data file::

    gpu_count x GPU price  +  vcpus x core price  +  memory GiB x RAM price

The mapping is deliberately small and written down here:

* GPU: ``category.resourceGroup == "GPU"`` and a description ``[Spot Preemptible ]<name> GPU running in <area>``
  where ``<name>`` is ``GPU_SKU_NAMES[accelerator_type]`` exactly (so "Nvidia H100 80GB Mega GPU" or
  "... Virtual Workstation GPU" never price an ``nvidia-h100-80gb`` / ``nvidia-tesla-t4``); unit ``h``.
* Core / RAM: the machine family (``a3-highgpu-8g`` -> ``A3``; ``extra.machine_type`` where the type name is
  ours, e.g. ``n1-standard-8-t4`` -> ``n1-standard-8`` -> ``N1``) and a description
  ``[Spot Preemptible ]<FAMILY> [Predefined ]Instance Core|Ram running in <area>``; units ``h`` and ``GiBy.h``.
* The region is one of the SKU's ``serviceRegions``; the price is the first tier of
  ``pricingInfo[0].pricingExpression.tieredRates`` (``units`` + ``nanos``), in USD.

A type/region/market missing any of its components keeps its dated price (a GPU price alone would undercount).
No google.auth: the API takes an API key (``key=``); the key never appears in errors or logs. Failures raise
``ProviderUnavailableError`` (network, 429, 5xx, bad JSON) or ``ProviderError`` (400/401/403, e.g. a bad key), and
``build_catalog`` keeps the data file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gpufleet.common.errors import ProviderError, ProviderUnavailableError
from gpufleet.coordinator.providers.catalog import InstanceType, ProviderCatalog, RegionPrice, load_builtin

log = logging.getLogger(__name__)

#: Compute Engine's service id in the Cloud Billing Catalog
COMPUTE_SERVICE_ID = "6F81-5844-456A"

#: GCE accelerator type (``extra.accelerator_type`` in gcp.json) -> the GPU's name in SKU descriptions
GPU_SKU_NAMES: dict[str, str] = {
    "nvidia-h100-80gb": "Nvidia H100 80GB",
    "nvidia-a100-80gb": "Nvidia A100 80GB",
    "nvidia-tesla-a100": "Nvidia Tesla A100",
    "nvidia-l4": "Nvidia L4",
    "nvidia-tesla-t4": "Nvidia Tesla T4",
    "nvidia-tesla-v100": "Nvidia Tesla V100",
}

_MARKETS = {"OnDemand": False, "Preemptible": True}
_PREFIX = r"^(?:Spot Preemptible |Preemptible )?"
_GPU_RE = re.compile(_PREFIX + r"(?P<name>.+?) GPU running in ")
_MACHINE_RE = re.compile(
    _PREFIX + r"(?P<family>[A-Z][0-9A-Z]*) (?:Predefined )?Instance (?P<part>Core|Ram) running in "
)
_UNITS = {"gpu": "h", "core": "h", "ram": "GiBy.h"}

#: (component, name, region, spot) -> USD per unit; component "gpu" (name: GPU_SKU_NAMES value), "core"/"ram"
#: (name: machine family, e.g. "A3")
PriceTable = dict[tuple[str, str, str, bool], Decimal]


def _unit_price(sku: dict[str, Any]) -> tuple[str, Decimal] | None:
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    expr = infos[0].get("pricingExpression", {})
    tiers = sorted(expr.get("tieredRates") or [], key=lambda t: float(t.get("startUsageAmount", 0)))
    if not tiers:
        return None
    money = tiers[0].get("unitPrice", {})
    if money.get("currencyCode", "USD") != "USD":
        return None
    value = Decimal(str(money.get("units") or 0)) + Decimal(int(money.get("nanos") or 0)) / Decimal(10**9)
    return str(expr.get("usageUnit", "")), value


def price_table(skus: Iterable[dict[str, Any]]) -> PriceTable:
    """The GPU, core and RAM prices among Compute Engine SKUs (see the module docstring for the mapping)."""
    gpu_names = set(GPU_SKU_NAMES.values())
    table: PriceTable = {}
    for sku in skus:
        category = sku.get("category", {})
        spot = _MARKETS.get(str(category.get("usageType", "")))
        if spot is None:
            continue
        description = str(sku.get("description", ""))
        key: tuple[str, str] | None = None
        if category.get("resourceGroup") == "GPU":
            m = _GPU_RE.match(description)
            if m and m["name"] in gpu_names:
                key = ("gpu", m["name"])
        elif m2 := _MACHINE_RE.match(description):
            key = (m2["part"].lower(), m2["family"])
        if key is None:
            continue
        priced = _unit_price(sku)
        if priced is None or priced[0] != _UNITS[key[0]] or priced[1] <= 0:
            log.debug("gcp pricing: skipping SKU %s (%s): no usable USD price", sku.get("skuId"), description)
            continue
        for region in sku.get("serviceRegions", []):
            table[(key[0], key[1], str(region), spot)] = priced[1]
    return table


def machine_family(t: InstanceType) -> str:
    """``a3-highgpu-8g`` -> ``A3``; ``extra.machine_type`` wins where the catalog's name is not GCE's."""
    return t.extra.get("machine_type", t.name).split("-")[0].upper()


def instance_price(table: PriceTable, t: InstanceType, region: str, spot: bool) -> int | None:
    """Micro-dollars per hour for type ``t`` in ``region``/market, or None where a component is not priced."""
    gpu_name = GPU_SKU_NAMES.get(t.extra.get("accelerator_type", ""))
    family = machine_family(t)
    parts = (("gpu", gpu_name or "", t.gpu_count), ("core", family, t.vcpus), ("ram", family, None))
    total = Decimal(0)
    for component, name, count in parts:
        price = table.get((component, name, region, spot))
        if price is None:
            return None
        total += price * (Decimal(t.memory_mib) / 1024 if count is None else count)
    return int((total * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


class GcpBillingPricing:
    """Prices from the Cloud Billing Catalog API for the types and regions of the built-in GCP catalog.
    ``endpoint`` is configurable (tests use a loopback fake); ``api_key`` is sent as ``key=``."""

    provider = "gcp"

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str = "https://cloudbilling.googleapis.com",
        base: ProviderCatalog | None = None,
        timeout_s: float = 30.0,
        page_size: int = 5000,
    ) -> None:
        self.api_key = api_key
        self.endpoint = endpoint.rstrip("/")
        self.base = base
        self.timeout_s = timeout_s
        self.page_size = page_size

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        query = dict(params)
        if self.api_key:
            query["key"] = self.api_key
        url = f"{self.endpoint}/v1/services/{COMPUTE_SERVICE_ID}/skus?{urllib.parse.urlencode(query)}"
        where = f"gcp billing catalog ({self.endpoint})"  # never the URL: it holds the key
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                page = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = _error_message(e)
            if e.code in (400, 401, 403, 404):
                raise ProviderError(f"{where}: HTTP {e.code}: {detail} (check pricing.gcp.api_key)") from None
            raise ProviderUnavailableError(f"{where}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ProviderUnavailableError(f"{where}: {type(e).__name__}: {reason}") from None
        except ValueError as e:
            raise ProviderUnavailableError(f"{where}: the answer is not JSON ({e})") from None
        if not isinstance(page, dict):
            raise ProviderUnavailableError(f"{where}: the answer is not a JSON object")
        return page

    def fetch_skus(self) -> list[dict[str, Any]]:
        """Every Compute Engine SKU, following ``nextPageToken``."""
        skus: list[dict[str, Any]] = []
        params = {"currencyCode": "USD", "pageSize": str(self.page_size)}
        while True:
            page = self._get(params)
            skus.extend(page.get("skus", []))
            token = page.get("nextPageToken")
            if not token:
                return skus
            params["pageToken"] = str(token)

    def _refresh_sync(self, base: ProviderCatalog) -> ProviderCatalog:
        table = price_table(self.fetch_skus())
        types: dict[str, InstanceType] = {}
        priced = 0
        for t in base.types.values():
            prices = dict(t.prices)
            for region, old in t.prices.items():
                on_demand = instance_price(table, t, region, False)
                spot = instance_price(table, t, region, True)
                priced += (on_demand is not None) + (spot is not None)
                prices[region] = RegionPrice(on_demand or old.on_demand_micros, spot or old.spot_micros)
            types[t.name] = replace(t, prices=prices)
        log.info("gcp pricing: %d prices refreshed, the rest kept from the %s data file", priced, base.as_of)
        today = datetime.now(UTC).date().isoformat()
        return ProviderCatalog(
            base.provider, today, f"Cloud Billing Catalog API ({self.endpoint})", base.regions, types
        )

    async def refresh(self) -> ProviderCatalog:
        base = self.base or load_builtin("gcp")
        return await asyncio.to_thread(self._refresh_sync, base)


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
        return str(body.get("error", {}).get("message", e.reason))
    except (ValueError, AttributeError, OSError):
        return str(e.reason)


def create_pricing(settings: dict[str, Any]) -> GcpBillingPricing:
    """Pricing registry factory. Settings (all optional): ``api_key`` (a Cloud Billing API key; the public catalog
    is also readable with OAuth, which this source does not do), ``endpoint``."""
    key = settings.get("api_key")
    return GcpBillingPricing(
        api_key=str(key) if key else None,
        endpoint=str(settings.get("endpoint", "https://cloudbilling.googleapis.com")),
    )
