"""A leader with ``[autoscaler.pricing]`` refreshes its catalog from the live source (a loopback fake of the GCP
Cloud Billing Catalog here) when it starts leading, and plans with the new prices; bad settings are named."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gpufleet.coordinator.autoscaler.config import AutoscalerConfig
from gpufleet.coordinator.autoscaler.service import Autoscaler
from gpufleet.coordinator.providers.catalog import load_builtin
from gpufleet.coordinator.providers.registry import ProviderRegistry
from tests.fakes.gcp_billing import FakeCloudBilling, gce_sku
from tests.unit.coordinator.autoscaler.helpers import FakeCluster

KEY = "AIza-test-key"
US = ["us-central1", "us-east1"]


async def test_leader_refreshes_prices_when_it_starts_leading() -> None:
    skus = [
        gce_sku("Nvidia L4 GPU running in Americas", "GPU", "OnDemand", US, "0.56"),
        gce_sku("G2 Instance Core running in Americas", "CPU", "OnDemand", US, "0.02"),
        gce_sku("G2 Instance Ram running in Americas", "RAM", "OnDemand", US, "0.0025", "GiBy.h"),
    ]
    with FakeCloudBilling(skus=skus, api_key=KEY) as fake:
        config = AutoscalerConfig(pricing={"gcp": {"api_key": KEY, "endpoint": fake.url}}, interval_s=3600)
        scaler = Autoscaler(config, ProviderRegistry([]), FakeCluster().ports())
        before = scaler.catalog.provider("gcp").get("g2-standard-4").price("us-central1", False)
        await scaler.set_enabled(True)
        try:
            for _ in range(100):
                price = scaler.catalog.provider("gcp").get("g2-standard-4").price("us-central1", False)
                if price != before:
                    break
                await asyncio.sleep(0.05)
        finally:
            await scaler.set_enabled(False)
    assert price == 680_000  # 0.56 + 4 x 0.02 + 16 x 0.0025 $/h, from the live source
    assert scaler.reconciler.planner.catalog is scaler.catalog
    # the other clouds keep their dated data
    assert scaler.catalog.provider("aws") == load_builtin("aws")


def test_pricing_for_an_unknown_cloud_is_named() -> None:
    with pytest.raises(ValidationError, match="no live pricing for oracle"):
        AutoscalerConfig(pricing={"oracle": {}})
