"""The built-in catalog data and ``gpufleet catalog``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.common.gpu_models import MODELS
from gpufleet.coordinator.providers.catalog import BUILTIN_PROVIDERS, Catalog, load_builtin
from gpufleet.coordinator.providers.catalog_cli import main


@pytest.mark.parametrize("provider", BUILTIN_PROVIDERS)
def test_builtin_catalog_is_dated_and_consistent(provider: str) -> None:
    pc = load_builtin(provider)
    assert pc.as_of and pc.source
    for t in pc.types.values():
        assert t.gpu_model in MODELS and t.gpu_count >= 1 and t.vcpus > 0 and t.memory_mib > 0
        for region, price in t.prices.items():
            assert region in pc.regions
            assert 0 < price.spot_micros < price.on_demand_micros  # integers, spot cheaper


def test_offers_filter_by_model_gpus_and_market() -> None:
    offers = list(Catalog.builtin().offers(gpu_models=["H100-80GB"], min_gpus=8, spot=True, providers=["aws"]))
    assert offers and all(o.spot and o.instance_type.name == "p5.48xlarge" for o in offers)


def test_cli_lists_cheapest_first_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpus", "8", "--gpu-model", "H100-80GB", "--spot", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["gpus"] >= 8 and r["spot"] and r["gpu_model"] == "H100-80GB" for r in rows)
    prices = [r["price_micros_per_hour"] for r in rows]
    assert prices == sorted(prices)
    assert {r["provider"] for r in rows} == {"aws", "gcp", "azure"}  # fake only when asked for


def test_cli_table_names_types_and_prices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--provider", "aws", "--region", "us-east-1", "--gpu-model", "L4"]) == 0
    out = capsys.readouterr().out
    assert "g6.xlarge" in out and "$0.8" in out and "prices as of" in out


def test_cli_reads_a_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: train\ncommand: [python, train.py]\nresources:\n  gpus: 4\n  gpu_models: [A100-80GB]\n"
        "placement:\n  spot: never\n  providers: [azure]\n"
    )
    assert main([str(job), "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["provider"] == "azure" and not r["spot"] and r["gpus"] >= 4 for r in rows)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--gpu-model", "X100"], "--gpu-model"),
        (["--provider", "ibm"], "--provider"),
        (["--region", "mars-1"], "--region"),
        (["--max-price", "cheap"], "--max-price"),
        (["--gpus", "eight"], "--gpus"),
        (["/nonexistent/job.yaml"], "FILE.yaml"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_flag(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert flag in capsys.readouterr().err


async def test_azure_retail_prices_refresh_the_catalog() -> None:
    from typing import Any

    from gpufleet.coordinator.providers.catalog.pricing import AzureRetailPricing, build_catalog
    from tests.fakes.http_server import JsonServer

    def item(meter: str, price: float, product: str = "Virtual Machines NCasT4_v3 Series Linux") -> dict[str, Any]:
        return {
            "retailPrice": price,
            "unitOfMeasure": "1 Hour",
            "meterName": meter,
            "skuName": meter,
            "productName": product,
        }

    seen: list[str] = []

    def route(method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        flt = query.get("$filter", [""])[0]
        seen.append(flt)
        if "page2" in query:
            return 200, {"Items": [item("NC4as T4 v3 Spot", 0.21)], "NextPageLink": None}, {}
        if "armSkuName eq 'Standard_NC4as_T4_v3'" in flt and "armRegionName eq 'eastus'" in flt:
            items = [item("NC4as T4 v3", 1.5, "Virtual Machines NCasT4_v3 Series Windows"), item("NC4as T4 v3", 0.6)]
            return 200, {"Items": items, "NextPageLink": f"{server.url}/api/retail/prices?page2=1&$filter=x"}, {}
        return 200, {"Items": [], "NextPageLink": None}, {}

    server = JsonServer(route).start()
    try:
        catalog = await build_catalog([AzureRetailPricing(endpoint=server.url)])
    finally:
        server.stop()
    pc = catalog.provider("azure")
    t4 = pc.get("Standard_NC4as_T4_v3")
    assert t4.price("eastus", False) == 600_000 and t4.price("eastus", True) == 210_000
    old = load_builtin("azure").get("Standard_NC4as_T4_v3")
    assert t4.price("westeurope", False) == old.price("westeurope", False)  # not priced by the API: kept
    assert "Retail Prices API" in pc.source and pc.as_of != load_builtin("azure").as_of
    assert any("priceType eq 'Consumption'" in f for f in seen)
