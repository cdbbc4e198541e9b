"""A loopback fake of the Cloud Billing Catalog API's SKU listing (``GET /v1/services/{id}/skus``).

It serves the SKUs given, ``page_size`` per page with ``nextPageToken``, checks ``currencyCode=USD`` and, when
``api_key`` is set, answers a wrong or missing ``key=`` the way Google does (HTTP 400, INVALID_ARGUMENT).
``gce_sku`` builds one SKU in the API's shape.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.fakes.http_server import JsonServer

COMPUTE_SERVICE_ID = "6F81-5844-456A"


def gce_sku(
    description: str, resource_group: str, usage_type: str, regions: list[str], usd: str, unit: str = "h"
) -> dict[str, Any]:
    """One Compute Engine SKU: ``usd`` per ``unit`` (``h`` or ``GiBy.h``) in ``regions``."""
    value = Decimal(usd)
    units = int(value)
    nanos = int((value - units) * 10**9)
    sku_id = f"{zlib.crc32(description.encode()) & 0xFFFF:04X}-{len(regions):04X}-{units % 0xFFFF:04X}"
    return {
        "name": f"services/{COMPUTE_SERVICE_ID}/skus/{sku_id}",
        "skuId": sku_id,
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": "Compute",
            "resourceGroup": resource_group,
            "usageType": usage_type,
        },
        "serviceRegions": regions,
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": unit,
                    "displayQuantity": 1,
                    "tieredRates": [
                        {
                            "startUsageAmount": 0,
                            "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos},
                        }
                    ],
                    "usageUnitDescription": "hour" if unit == "h" else "gibibyte hour",
                    "baseUnit": "s" if unit == "h" else "By.s",
                    "baseUnitDescription": "second" if unit == "h" else "byte second",
                    "baseUnitConversionFactor": 3600 if unit == "h" else 3865470566400,
                },
                "currencyConversionRate": 1,
                "effectiveTime": "2026-11-22T00:00:00Z",
            }
        ],
        "serviceProviderName": "Google",
    }


@dataclass
class FakeCloudBilling:
    skus: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 3
    api_key: str = ""
    status: int = 200  # anything else: every request answers that HTTP status
    requests: list[dict[str, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = JsonServer(self._route)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeCloudBilling:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        self.requests.append(query)
        if self.status != 200:
            return self.status, {"error": {"code": self.status, "message": "injected", "status": "UNAVAILABLE"}}, {}
        if method != "GET" or path != f"/v1/services/{COMPUTE_SERVICE_ID}/skus":
            return 404, {"error": {"code": 404, "message": f"no such resource {path}", "status": "NOT_FOUND"}}, {}
        if self.api_key and query.get("key", [""])[0] != self.api_key:
            message = "API key not valid. Please pass a valid API key."
            return 400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}, {}
        if query.get("currencyCode", ["USD"])[0] != "USD":
            return 400, {"error": {"code": 400, "message": "currencyCode", "status": "INVALID_ARGUMENT"}}, {}
        size = min(int(query.get("pageSize", ["5000"])[0]), self.page_size)
        start = int(query.get("pageToken", ["0"])[0] or 0)
        page: dict[str, Any] = {"skus": self.skus[start : start + size], "nextPageToken": ""}
        if start + size < len(self.skus):
            page["nextPageToken"] = str(start + size)
        return 200, page, {}
