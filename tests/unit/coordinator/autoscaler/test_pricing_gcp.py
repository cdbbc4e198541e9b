"""GCP pricing refresh: the Cloud Billing Catalog API client against a loopback fake (tests/fakes/gcp_billing.py)."""

from __future__ import annotations

import logging

import pytest

from gpufleet.common.errors import ProviderError, ProviderUnavailableError
from gpufleet.coordinator.providers.catalog import load_builtin
from gpufleet.coordinator.providers.catalog.pricing import build_catalog, live_pricing
from gpufleet.coordinator.providers.gcp.pricing import GcpBillingPricing
from tests.fakes.gcp_billing import FakeCloudBilling, gce_sku

KEY = "AIza-test-key-123"
US = ["us-central1", "us-east1"]


def _skus() -> list[dict[str, object]]:
    return [
        # A100 40GB on A2: GPU + core + RAM, both markets
        gce_sku("Nvidia Tesla A100 GPU running in Americas", "GPU", "OnDemand", US, "2.933908"),
        gce_sku("A2 Instance Core running in Americas", "CPU", "OnDemand", US, "0.031611"),
        gce_sku("A2 Instance Ram running in Americas", "RAM", "OnDemand", US, "0.004237", "GiBy.h"),
        gce_sku("Spot Preemptible Nvidia Tesla A100 GPU running in Americas", "GPU", "Preemptible", US, "1.1"),
        gce_sku("Spot Preemptible A2 Instance Core running in Americas", "CPU", "Preemptible", US, "0.01"),
        gce_sku("Spot Preemptible A2 Instance Ram running in Americas", "RAM", "Preemptible", US, "0.001", "GiBy.h"),
        # L4 on G2, on-demand only; in europe-west4 the GPU is priced but not the G2 machine
        gce_sku("Nvidia L4 GPU running in Americas", "GPU", "OnDemand", US, "0.56"),
        gce_sku("G2 Instance Core running in Americas", "CPU", "OnDemand", US, "0.02"),
        gce_sku("G2 Instance Ram running in Americas", "RAM", "OnDemand", US, "0.0025", "GiBy.h"),
        gce_sku("Nvidia L4 GPU running in Netherlands", "GPU", "OnDemand", ["europe-west4"], "0.62"),
        # T4 on N1 (the catalog's name n1-standard-8-t4 maps to machine type n1-standard-8)
        gce_sku("Nvidia Tesla T4 GPU running in Americas", "GPU", "OnDemand", US, "0.35"),
        gce_sku("N1 Predefined Instance Core running in Americas", "N1Standard", "OnDemand", US, "0.031611"),
        gce_sku("N1 Predefined Instance Ram running in Americas", "N1Standard", "OnDemand", US, "0.004237", "GiBy.h"),
        # look-alikes that must not price anything
        gce_sku("Nvidia L4 Virtual Workstation GPU running in Americas", "GPU", "OnDemand", US, "0.01"),
        gce_sku("Nvidia H100 80GB Mega GPU running in Americas", "GPU", "OnDemand", US, "0.01"),
        gce_sku("Commitment v1: Nvidia L4 GPU running in Americas for 1 Year", "GPU", "Commit1Yr", US, "0.01"),
        gce_sku("N1 Custom Instance Core running in Americas", "N1Standard", "OnDemand", US, "0.9"),
    ]


async def test_gcp_billing_catalog_prices_gpu_machines_by_component() -> None:
    with FakeCloudBilling(skus=_skus(), page_size=3, api_key=KEY) as fake:
        source = live_pricing("gcp", {"api_key": KEY, "endpoint": fake.url})
        catalog = await build_catalog([source])
    pc, old = catalog.provider("gcp"), load_builtin("gcp")
    a2_1, a2_8 = pc.get("a2-highgpu-1g"), pc.get("a2-highgpu-8g")
    # 1 x 2.933908 + 12 vCPU x 0.031611 + 85 GiB x 0.004237 = 3.673385 $/h
    assert a2_1.price("us-central1", False) == 3_673_385
    assert a2_1.price("us-central1", True) == 1_305_000  # 1.1 + 12 x 0.01 + 85 x 0.001
    assert a2_8.price("us-central1", False) == 29_387_080  # 8 GPUs, 96 vCPUs, 680 GiB
    g2 = pc.get("g2-standard-4")
    assert g2.price("us-central1", False) == 680_000  # 0.56 + 4 x 0.02 + 16 x 0.0025 (not the workstation SKU)
    assert g2.price("us-central1", True) == old.get("g2-standard-4").price("us-central1", True)  # no spot SKUs
    assert g2.price("europe-west4", False) == old.get("g2-standard-4").price("europe-west4", False)  # no G2 SKUs
    assert pc.get("n1-standard-8-t4").price("us-central1", False) == 729_998  # 0.35 + 8 x 0.031611 + 30 x 0.004237
    h100 = pc.get("a3-highgpu-8g")  # only the "Mega" look-alike is listed: nothing changes
    assert h100.prices == old.get("a3-highgpu-8g").prices
    assert "Cloud Billing Catalog" in pc.source and pc.as_of != old.as_of
    # paged (17 SKUs, 3 a page), USD, the key on every request
    assert len(fake.requests) == 6 and [q.get("pageToken", [""])[0] for q in fake.requests][:3] == ["", "3", "6"]
    assert all(q["currencyCode"] == ["USD"] and q["key"] == [KEY] for q in fake.requests)


async def test_a_bad_api_key_keeps_the_dated_prices_and_never_logs_the_key(caplog: pytest.LogCaptureFixture) -> None:
    with FakeCloudBilling(skus=_skus(), api_key=KEY) as fake, caplog.at_level(logging.WARNING):
        catalog = await build_catalog([GcpBillingPricing(api_key="wrong-key-456", endpoint=fake.url)])
    assert catalog.provider("gcp") == load_builtin("gcp")
    assert "API key not valid" in caplog.text and "keeping the data file" in caplog.text
    assert "wrong-key-456" not in caplog.text


async def test_server_errors_and_an_unreachable_endpoint_are_typed() -> None:
    with FakeCloudBilling(status=503) as fake:
        with pytest.raises(ProviderUnavailableError, match="HTTP 503"):
            await GcpBillingPricing(api_key=KEY, endpoint=fake.url).refresh()
        url = fake.url
    with pytest.raises(ProviderUnavailableError, match="gcp billing catalog"):
        await GcpBillingPricing(api_key=KEY, endpoint=url, timeout_s=2).refresh()
    with FakeCloudBilling(skus=_skus(), api_key=KEY) as fake:
        with pytest.raises(ProviderError, match="HTTP 400") as err:
            await GcpBillingPricing(endpoint=fake.url).refresh()  # no key at all
    assert not isinstance(err.value, ProviderUnavailableError)  # a configuration problem, not a transient one
