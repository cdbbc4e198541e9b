"""A loopback fake of the AWS Price List Query API and EC2 ``DescribeSpotPriceHistory``, for the real boto3 client.

moto has no Pricing API, and its spot history is one constant price, so this one HTTP server on 127.0.0.1 speaks:

* AWS JSON 1.1 (``X-Amz-Target: AWSPriceListService.GetProducts``): TERM_MATCH filters over the products given,
  ``{"PriceList": [<json string>...], "FormatVersion": "aws_v1", "NextToken": ...}`` pages of ``page_size``;
* the EC2 query protocol (form-encoded ``Action=DescribeSpotPriceHistory``): the records of the region named in the
  request's SigV4 credential scope, filtered by InstanceType.N, XML pages with ``nextToken``.

``fail_with`` makes every pricing call answer that AWS error code (HTTP 400), as AWS does for a bad credential.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from tests.fakes.http_server import LoopbackHttpServer


def ec2_product(instance_type: str, region: str, usd_per_hour: str, **attributes: str) -> dict[str, Any]:
    """One price list product as the Price List API returns it (aws_v1), with a single on-demand term."""
    sku = re.sub(r"[^A-Z0-9]", "", f"{instance_type}{region}{usd_per_hour}{sorted(attributes.items())}".upper())
    attrs = {
        "instanceType": instance_type,
        "regionCode": region,
        "location": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "servicecode": "AmazonEC2",
        **attributes,
    }
    term = f"{sku}.JRTCKXETXF"
    return {
        "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "priceDimensions": {
                        f"{term}.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "description": f"${usd_per_hour} per On Demand Linux {instance_type} Instance Hour",
                            "appliesTo": [],
                            "rateCode": f"{term}.6YS6EN2CT7",
                            "beginRange": "0",
                            "pricePerUnit": {"USD": usd_per_hour},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {},
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    }


@dataclass
class SpotRecord:
    instance_type: str
    zone: str
    price: str
    timestamp: str  # ISO 8601, e.g. 2026-11-22T18:00:00.000Z


@dataclass
class FakeAwsPricing:
    products: list[dict[str, Any]] = field(default_factory=list)
    spot: list[SpotRecord] = field(default_factory=list)
    page_size: int = 2
    fail_with: str = ""
    #: every request seen: ("GetProducts", request body) or ("DescribeSpotPriceHistory", form params)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                if target:
                    status, body, ctype = fake._pricing(target, json.loads(raw or b"{}"))
                else:
                    region_m = re.search(r"Credential=[^/]+/\d+/([^/]+)/", self.headers.get("Authorization", ""))
                    region = region_m.group(1) if region_m else "us-east-1"
                    status, body, ctype = fake._ec2(parse_qs(raw.decode()), region)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = LoopbackHttpServer(Handler)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeAwsPricing:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # --- AWS JSON 1.1: AWSPriceListService -----------------------------------------------------------------------

    def _pricing(self, target: str, req: dict[str, Any]) -> tuple[int, str, str]:
        ctype = "application/x-amz-json-1.1"
        self.calls.append((target.rsplit(".", 1)[-1], req))
        if self.fail_with:
            return 400, json.dumps({"__type": self.fail_with, "Message": f"injected {self.fail_with}"}), ctype
        if target != "AWSPriceListService.GetProducts":
            return 400, json.dumps({"__type": "UnknownOperationException", "Message": target}), ctype
        if req.get("ServiceCode") != "AmazonEC2":
            return 400, json.dumps({"__type": "InvalidParameterException", "Message": "ServiceCode"}), ctype
        terms = {f["Field"]: f["Value"] for f in req.get("Filters", []) if f.get("Type") == "TERM_MATCH"}
        matching = [
            json.dumps(p)
            for p in self.products
            if all(p["product"]["attributes"].get(k) == v for k, v in terms.items())
        ]
        size = min(int(req.get("MaxResults", 100)), self.page_size)
        start = int(req.get("NextToken") or 0)
        page: dict[str, Any] = {"PriceList": matching[start : start + size], "FormatVersion": "aws_v1"}
        if start + size < len(matching):
            page["NextToken"] = str(start + size)
        return 200, json.dumps(page), ctype

    # --- EC2 query protocol: DescribeSpotPriceHistory -------------------------------------------------------------

    def _ec2(self, params: dict[str, list[str]], region: str) -> tuple[int, str, str]:
        flat = {k: v[0] for k, v in params.items()}
        self.calls.append((flat.get("Action", ""), flat))
        if flat.get("Action") != "DescribeSpotPriceHistory":
            return 400, _ec2_error("InvalidAction", flat.get("Action", "")), "text/xml"
        types = {v for k, v in flat.items() if k.startswith("InstanceType.")}
        records = [r for r in self.spot if r.zone.startswith(region) and (not types or r.instance_type in types)]
        start = int(flat.get("NextToken") or 0)
        page = records[start : start + self.page_size]
        items = "".join(
            f"<item><instanceType>{escape(r.instance_type)}</instanceType>"
            "<productDescription>Linux/UNIX</productDescription>"
            f"<spotPrice>{escape(r.price)}</spotPrice><timestamp>{escape(r.timestamp)}</timestamp>"
            f"<availabilityZone>{escape(r.zone)}</availabilityZone></item>"
            for r in page
        )
        token = f"<nextToken>{start + self.page_size}</nextToken>" if start + self.page_size < len(records) else ""
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>fake</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>{token}"
            "</DescribeSpotPriceHistoryResponse>"
        )
        return 200, body, "text/xml"


def _ec2_error(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "</Error></Errors><RequestID>fake</RequestID></Response>"
    )
