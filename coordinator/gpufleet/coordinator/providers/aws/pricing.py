"""Live AWS prices: the Price List Query API (on-demand) and EC2 spot price history, as a ``PricingSource``.

* On-demand: ``pricing.get_products`` (AWS JSON 1.1, ``AWSPriceListService.GetProducts``) with TERM_MATCH filters
  ServiceCode=AmazonEC2, instanceType, regionCode, operatingSystem=Linux, tenancy=Shared, preInstalledSw=NA,
  capacitystatus=Used, paged by ``NextToken``. Each ``PriceList`` entry is a JSON *string*; the price is the
  ``terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`` with unit ``Hrs`` (the lowest positive one when several
  products match).
* Spot: ``ec2.describe_spot_price_history`` (ProductDescriptions ``Linux/UNIX``, StartTime now, so AWS returns the
  price in effect per zone), paged by ``NextToken``; the latest record per (type, zone), and the region's price is
  the lowest zone price.

Shapes (GPUs, vCPUs, memory) and regions stay those of the built-in data file; a type/region/market the API does
not price keeps its dated price. Any API failure raises a typed error (``ProviderUnavailableError`` and friends,
through providers/aws/errors.py) and ``build_catalog`` keeps the data file. boto3 is imported lazily by
``client.py`` (the only module that imports it); credentials come from boto3's normal chain unless given.
The Price List API lives in ``us-east-1`` (also ``eu-central-1``, ``ap-south-1``): ``pricing_region``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem, ProviderUnavailableError
from gpufleet.coordinator.providers.aws.client import AwsClientSettings, aws_client
from gpufleet.coordinator.providers.aws.errors import mapped
from gpufleet.coordinator.providers.catalog import InstanceType, ProviderCatalog, RegionPrice, load_builtin

log = logging.getLogger(__name__)

#: the fixed TERM_MATCH filters of an on-demand Linux, shared-tenancy, no-preinstalled-software price
BASE_FILTERS: dict[str, str] = {
    "ServiceCode": "AmazonEC2",
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}


def usd_to_micros(value: object) -> int:
    """``"98.3200000000"`` -> 98_320_000 (integer micro-dollars, rounded half up)."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ProviderUnavailableError(f"aws pricing: price {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise ProviderUnavailableError(f"aws pricing: price {value!r} is not a non-negative number")
    return int((d * 1_000_000).to_integral_value(rounding="ROUND_HALF_UP"))


def on_demand_from_price_list(price_list: list[str], instance_type: str, region: str) -> int | None:
    """The lowest positive on-demand USD/hour (micro-dollars) among the products of one GetProducts answer that
    are ``instance_type`` in ``region``; None when none is priced."""
    best: int | None = None
    for i, raw in enumerate(price_list):
        try:
            doc = json.loads(raw) if isinstance(raw, str) else raw
            attrs = doc["product"]["attributes"]
            on_demand = doc.get("terms", {}).get("OnDemand", {})
        except (ValueError, KeyError, TypeError) as e:
            raise ProviderUnavailableError(f"aws pricing: PriceList[{i}] is not a price list product ({e})") from e
        if attrs.get("instanceType") != instance_type or attrs.get("regionCode", region) != region:
            continue
        for term in on_demand.values():
            for dim in term.get("priceDimensions", {}).values():
                usd = dim.get("pricePerUnit", {}).get("USD")
                if usd is None or dim.get("unit") not in ("Hrs", "Hours", "hours"):
                    continue
                micros = usd_to_micros(usd)
                if micros > 0 and (best is None or micros < best):
                    best = micros
    return best


def lowest_latest_spot(history: list[dict[str, Any]]) -> dict[str, int]:
    """Spot price history records -> instance type -> lowest zone price, taking each zone's latest record."""
    latest: dict[tuple[str, str], tuple[datetime, int]] = {}
    for rec in history:
        key = (str(rec["InstanceType"]), str(rec["AvailabilityZone"]))
        ts = rec["Timestamp"]
        if not isinstance(ts, datetime):
            ts = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        price = usd_to_micros(rec["SpotPrice"])
        if key not in latest or ts > latest[key][0]:
            latest[key] = (ts, price)
    out: dict[str, int] = {}
    for (itype, _zone), (_ts, price) in latest.items():
        if price > 0:
            out[itype] = min(price, out.get(itype, price))
    return out


class AwsPricing:
    """On-demand prices from the AWS Price List Query API and spot prices from EC2 spot price history, for the
    types and regions of the built-in AWS catalog. ``client.endpoint_url`` points EC2 (and, unless
    ``pricing_endpoint_url`` is given, the pricing client) at a fake in tests."""

    provider = "aws"

    def __init__(
        self,
        client: AwsClientSettings | None = None,
        *,
        pricing_endpoint_url: str | None = None,
        pricing_region: str = "us-east-1",
        base: ProviderCatalog | None = None,
        spot: bool = True,
        page_size: int = 100,
    ) -> None:
        self.client = client or AwsClientSettings()
        self.pricing_endpoint_url = pricing_endpoint_url or self.client.endpoint_url
        self.pricing_region = pricing_region
        self.base = base
        self.spot = spot
        self.page_size = page_size

    def _client(self, service: str, region: str, endpoint_url: str | None) -> Any:
        with mapped(f"{service} client"):
            # a refresh is a batch job: let botocore ride out throttling
            return aws_client(service, region, self.client, endpoint_url=endpoint_url, max_attempts=3)

    def _on_demand(self, pricing: Any, instance_type: str, region: str) -> int | None:
        filters = {**BASE_FILTERS, "instanceType": instance_type, "regionCode": region}
        request: dict[str, Any] = {
            "ServiceCode": filters.pop("ServiceCode"),
            "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
            "FormatVersion": "aws_v1",
            "MaxResults": self.page_size,
        }
        price_list: list[str] = []
        while True:
            with mapped("pricing GetProducts"):
                page = pricing.get_products(**request)
            price_list.extend(page.get("PriceList", []))
            token = page.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
        return on_demand_from_price_list(price_list, instance_type, region)

    def _spot(self, ec2: Any, instance_types: list[str]) -> dict[str, int]:
        request: dict[str, Any] = {
            "InstanceTypes": instance_types,
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": datetime.now(UTC),
        }
        history: list[dict[str, Any]] = []
        while True:
            with mapped("DescribeSpotPriceHistory"):
                page = ec2.describe_spot_price_history(**request)
            history.extend(page.get("SpotPriceHistory", []))
            token = page.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
        try:
            return lowest_latest_spot(history)
        except (KeyError, ValueError) as e:
            raise ProviderUnavailableError(f"aws DescribeSpotPriceHistory: malformed record ({e})") from e

    def _refresh_sync(self, base: ProviderCatalog) -> ProviderCatalog:
        pricing = self._client("pricing", self.pricing_region, self.pricing_endpoint_url)
        regions = sorted({r for t in base.types.values() for r in t.prices})
        spot: dict[str, dict[str, int]] = {}
        if self.spot:
            for region in regions:
                ec2 = self._client("ec2", region, self.client.endpoint_url)
                names = [t.name for t in base.types.values() if region in t.prices]
                spot[region] = self._spot(ec2, names)
        types: dict[str, InstanceType] = {}
        priced = 0
        for t in base.types.values():
            prices = dict(t.prices)
            for region, old in t.prices.items():
                on_demand = self._on_demand(pricing, t.name, region)
                spot_price = spot.get(region, {}).get(t.name)
                priced += (on_demand is not None) + (spot_price is not None)
                prices[region] = RegionPrice(on_demand or old.on_demand_micros, spot_price or old.spot_micros)
            types[t.name] = replace(t, prices=prices)
        log.info("aws pricing: %d prices refreshed, the rest kept from the %s data file", priced, base.as_of)
        today = datetime.now(UTC).date().isoformat()
        source = f"AWS Price List Query API + EC2 spot price history ({self.pricing_endpoint_url or 'aws'})"
        return ProviderCatalog(base.provider, today, source, base.regions, types)

    async def refresh(self) -> ProviderCatalog:
        base = self.base or load_builtin("aws")
        return await asyncio.to_thread(self._refresh_sync, base)


def create_pricing(settings: dict[str, Any]) -> AwsPricing:
    """Pricing registry factory. Settings (all optional): ``endpoint_url``, ``pricing_endpoint_url``,
    ``pricing_region``, ``access_key_id``/``secret_access_key``/``session_token``/``profile`` (else boto3's chain),
    ``spot`` (false: keep dated spot prices)."""
    pricing_region = settings.get("pricing_region", "us-east-1")
    if pricing_region not in ("us-east-1", "eu-central-1", "ap-south-1"):
        raise InvalidInputError(
            Problem("pricing.aws.pricing_region", "the Price List API is in us-east-1, eu-central-1 or ap-south-1")
        )
    client = AwsClientSettings(
        endpoint_url=settings.get("endpoint_url"),
        access_key_id=settings.get("access_key_id"),
        secret_access_key=settings.get("secret_access_key"),
        session_token=settings.get("session_token"),
        profile=settings.get("profile"),
    )
    return AwsPricing(
        client,
        pricing_endpoint_url=settings.get("pricing_endpoint_url"),
        pricing_region=str(pricing_region),
        spot=bool(settings.get("spot", True)),
    )
