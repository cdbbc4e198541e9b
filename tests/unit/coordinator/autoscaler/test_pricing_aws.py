"""AWS pricing refresh: the real boto3 ``pricing`` and ``ec2`` clients against a loopback fake (tests/fakes)."""

from __future__ import annotations

import logging

import pytest

from gpufleet.common.errors import ProviderError
from gpufleet.coordinator.providers.aws.client import AwsClientSettings
from gpufleet.coordinator.providers.aws.pricing import AwsPricing, on_demand_from_price_list
from gpufleet.coordinator.providers.catalog import load_builtin
from gpufleet.coordinator.providers.catalog.pricing import build_catalog, live_pricing
from tests.fakes.aws import DUMMY_CREDENTIALS
from tests.fakes.aws_pricing import FakeAwsPricing, SpotRecord, ec2_product


def _source(url: str) -> AwsPricing:
    source = live_pricing("aws", {"endpoint_url": url, **DUMMY_CREDENTIALS})
    assert isinstance(source, AwsPricing)
    return source


def _fake() -> FakeAwsPricing:
    products = [
        ec2_product("p5.48xlarge", "us-east-1", "98.1230000000"),
        # the same type with SQL preinstalled and with dedicated tenancy: filtered out by the request
        ec2_product("p5.48xlarge", "us-east-1", "120.0000000000", preInstalledSw="SQL Std"),
        ec2_product("p5.48xlarge", "us-east-1", "108.0000000000", tenancy="Dedicated"),
        ec2_product("g6.xlarge", "us-east-1", "0.8048000000"),
        ec2_product("g6.xlarge", "us-west-2", "0.8100000000"),
        ec2_product("g6.xlarge", "eu-west-1", "0.0000000000"),  # a zero price is not a price: keep the dated one
    ]
    # more g4dn products than one page holds: the answer spans several NextToken pages
    products += [ec2_product("g4dn.xlarge", "us-east-1", f"0.{600 + i}0000000") for i in range(5)]
    spot = [
        SpotRecord("p5.48xlarge", "us-east-1a", "40.000000", "2026-11-22T10:00:00.000Z"),
        SpotRecord("p5.48xlarge", "us-east-1a", "35.500000", "2026-11-22T12:00:00.000Z"),  # latest in 1a
        SpotRecord("p5.48xlarge", "us-east-1b", "30.000000", "2026-11-21T08:00:00.000Z"),
        SpotRecord("p5.48xlarge", "us-east-1b", "37.250000", "2026-11-22T11:00:00.000Z"),  # latest in 1b
        SpotRecord("g6.xlarge", "us-east-1c", "0.312300", "2026-11-22T09:00:00.000Z"),
        SpotRecord("g6.xlarge", "us-west-2a", "0.290000", "2026-11-22T09:00:00.000Z"),
    ]
    return FakeAwsPricing(products=products, spot=spot, page_size=2)


async def test_aws_prices_refresh_the_catalog_through_boto3() -> None:
    with _fake() as fake:
        catalog = await build_catalog([_source(fake.url)])
    pc = catalog.provider("aws")
    old = load_builtin("aws")
    p5, g6, g4 = pc.get("p5.48xlarge"), pc.get("g6.xlarge"), pc.get("g4dn.xlarge")
    assert p5.price("us-east-1", False) == 98_123_000
    assert p5.price("us-east-1", True) == 35_500_000  # lowest of each zone's latest record
    assert g6.price("us-east-1", False) == 804_800 and g6.price("us-east-1", True) == 312_300
    assert g6.price("us-west-2", False) == 810_000 and g6.price("us-west-2", True) == 290_000
    assert g4.price("us-east-1", False) == 600_000  # the cheapest of 5 products over 3 pages
    # not priced by the API (or priced 0): the dated data stays
    assert g6.price("eu-west-1", False) == old.get("g6.xlarge").price("eu-west-1", False)
    assert p5.price("eu-west-1", True) == old.get("p5.48xlarge").price("eu-west-1", True)
    assert "Price List" in pc.source and pc.as_of != old.as_of
    assert pc.get("p5.48xlarge").gpu_count == 8 and pc.regions == old.regions  # shapes are the data file's

    gets = [body for op, body in fake.calls if op == "GetProducts"]
    filters = {f["Field"]: f["Value"] for f in gets[0]["Filters"]}
    assert gets[0]["ServiceCode"] == "AmazonEC2" and gets[0]["FormatVersion"] == "aws_v1"
    assert {k: filters[k] for k in ("operatingSystem", "tenancy", "preInstalledSw", "capacitystatus")} == {
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    assert any("NextToken" in body for body in gets)  # the client followed the pages
    spots = [p for op, p in fake.calls if op == "DescribeSpotPriceHistory"]
    assert spots and all(p["ProductDescription.1"] == "Linux/UNIX" for p in spots)
    assert any("NextToken" in p for p in spots)


async def test_a_failing_aws_source_keeps_the_dated_prices_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with FakeAwsPricing(fail_with="AccessDeniedException") as fake, caplog.at_level(logging.WARNING):
        catalog = await build_catalog([_source(fake.url)])
        with pytest.raises(ProviderError, match="AccessDeniedException"):
            await _source(fake.url).refresh()  # the source itself raises a typed error
    pc = catalog.provider("aws")
    assert pc == load_builtin("aws")
    assert "AccessDeniedException" in caplog.text and "keeping the data file" in caplog.text


async def test_an_unreachable_endpoint_is_a_typed_error() -> None:
    with FakeAwsPricing() as fake:
        url = fake.url
    source = AwsPricing(AwsClientSettings(url, "testing", "testing", connect_timeout_s=0.5), spot=False)
    with pytest.raises(ProviderError, match="aws pricing GetProducts"):
        await source.refresh()


def test_price_list_parsing_ignores_other_types_and_rejects_garbage() -> None:
    import json

    docs = [json.dumps(ec2_product("g5.xlarge", "us-east-1", "1.006")), json.dumps(ec2_product("g6.xlarge", "x", "1"))]
    assert on_demand_from_price_list(docs, "g5.xlarge", "us-east-1") == 1_006_000
    assert on_demand_from_price_list(docs, "p5.48xlarge", "us-east-1") is None
    with pytest.raises(ProviderError, match="PriceList"):
        on_demand_from_price_list(["not json"], "g5.xlarge", "us-east-1")


def test_live_pricing_names_the_field_for_unknown_settings() -> None:
    from gpufleet.common.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"pricing\.provider.*known: azure, aws, gcp"):
        live_pricing("ibm")
    with pytest.raises(InvalidInputError, match=r"pricing\.aws\.pricing_region"):
        live_pricing("aws", {"pricing_region": "us-west-2"})
