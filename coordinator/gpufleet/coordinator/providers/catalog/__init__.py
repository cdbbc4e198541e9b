"""Instance-type catalog: GPU shape and hourly prices per provider and region, from dated data files.

Each ``<provider>.json`` next to this module holds ``as_of`` (the date the prices were taken), ``source`` (where
from), ``regions`` (with zones) and ``instance_types`` (GPU model by :mod:`gpufleet.common.gpu_models` name, GPU
count, vCPUs, memory MiB, and per-region ``on_demand`` / ``spot`` prices in integer micro-dollars per hour).
Prices are read through a :class:`~gpufleet.coordinator.providers.catalog.pricing.PricingSource` so a
pricing API can refresh them where credentials exist; the data files are the default and the tested path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.gpu_models import MODELS

#: providers whose data file ships with gpufleet
BUILTIN_PROVIDERS = ("aws", "gcp", "azure", "fake")


@dataclass(frozen=True, slots=True)
class RegionPrice:
    on_demand_micros: int
    spot_micros: int  # 0: no spot market for this type in this region


@dataclass(frozen=True, slots=True)
class InstanceType:
    provider: str
    name: str
    gpu_model: str
    gpu_count: int
    vcpus: int
    memory_mib: int
    prices: dict[str, RegionPrice]
    extra: dict[str, str] = field(default_factory=dict)  # cloud-specific API names (GCP accelerator type, ...)

    @property
    def gpu_memory_mib(self) -> int:
        return MODELS[self.gpu_model].memory_mib if self.gpu_model in MODELS else 0

    def price(self, region: str, spot: bool) -> int | None:
        """Micro-dollars per hour, or None where this type is not sold in that region/market."""
        p = self.prices.get(region)
        if p is None:
            return None
        value = p.spot_micros if spot else p.on_demand_micros
        return value or None


@dataclass(frozen=True, slots=True)
class ProviderCatalog:
    provider: str
    as_of: str
    source: str
    regions: dict[str, tuple[str, ...]]  # region -> zones
    types: dict[str, InstanceType]

    def get(self, name: str) -> InstanceType:
        try:
            return self.types[name]
        except KeyError:
            raise InvalidInputError(
                Problem(
                    "instance_type", f"{self.provider} has no instance type {name!r}; known: {', '.join(self.types)}"
                )
            ) from None

    def zones(self, region: str) -> tuple[str, ...]:
        if region not in self.regions:
            raise InvalidInputError(
                Problem("region", f"{self.provider} has no region {region!r}; known: {', '.join(self.regions)}")
            )
        return self.regions[region]


@dataclass(frozen=True, slots=True)
class Offer:
    """One way to buy a machine: a type in a region and market, at a price."""

    provider: str
    region: str
    spot: bool
    instance_type: InstanceType
    price_micros: int

    @property
    def key(self) -> tuple[str, str, str, bool]:
        return (self.provider, self.region, self.instance_type.name, self.spot)


def parse_catalog(doc: dict[str, Any], origin: str) -> ProviderCatalog:
    """Validate one catalog document; errors name the file and the field."""
    try:
        provider = str(doc["provider"])
        regions = {r: tuple(v.get("zones", ())) for r, v in doc["regions"].items()}
        types: dict[str, InstanceType] = {}
        for i, t in enumerate(doc["instance_types"]):
            if t["gpu_model"] not in MODELS:
                raise InvalidInputError(
                    Problem(f"{origin}: instance_types[{i}].gpu_model", f"unknown GPU model {t['gpu_model']!r}")
                )
            prices = {}
            for region, p in t["prices"].items():
                if region not in regions:
                    raise InvalidInputError(
                        Problem(f"{origin}: instance_types[{i}].prices", f"unknown region {region!r}")
                    )
                prices[region] = RegionPrice(int(p["on_demand"]), int(p.get("spot", 0)))
            types[t["name"]] = InstanceType(
                provider=provider,
                name=t["name"],
                gpu_model=t["gpu_model"],
                gpu_count=int(t["gpu_count"]),
                vcpus=int(t["vcpus"]),
                memory_mib=int(t["memory_mib"]),
                prices=prices,
                extra={str(k): str(v) for k, v in t.get("extra", {}).items()},
            )
        return ProviderCatalog(provider, str(doc["as_of"]), str(doc["source"]), regions, types)
    except KeyError as e:
        raise InvalidInputError(Problem(origin, f"catalog document is missing field {e.args[0]!r}")) from None


def load_builtin(provider: str) -> ProviderCatalog:
    if provider not in BUILTIN_PROVIDERS:
        raise InvalidInputError(
            Problem("provider", f"no built-in catalog for {provider!r}; known: {', '.join(BUILTIN_PROVIDERS)}")
        )
    text = resources.files(__name__).joinpath(f"{provider}.json").read_text()
    return parse_catalog(json.loads(text), f"{provider}.json")


def load_file(path: Path) -> ProviderCatalog:
    return parse_catalog(json.loads(path.read_text()), str(path))


class Catalog:
    """All providers' catalogs, with offer enumeration (cheapest first)."""

    def __init__(self, catalogs: Iterable[ProviderCatalog]) -> None:
        self.providers: dict[str, ProviderCatalog] = {c.provider: c for c in catalogs}

    @classmethod
    def builtin(cls, providers: Iterable[str] = BUILTIN_PROVIDERS) -> Catalog:
        return cls(load_builtin(p) for p in providers)

    def provider(self, name: str) -> ProviderCatalog:
        try:
            return self.providers[name]
        except KeyError:
            raise InvalidInputError(
                Problem("provider", f"unknown provider {name!r}; known: {', '.join(self.providers)}")
            ) from None

    def offers(
        self,
        *,
        providers: Iterable[str] | None = None,
        regions: Iterable[str] | None = None,
        spot: bool | None = None,
        gpu_models: Iterable[str] | None = None,
        min_gpus: int = 0,
        instance_types: Iterable[str] | None = None,
    ) -> Iterator[Offer]:
        """Every (type, region, market) matching the filters. ``spot=None`` yields both markets."""
        provs = set(providers) if providers else None
        regs = set(regions) if regions else None
        models = set(gpu_models) if gpu_models else None
        names = set(instance_types) if instance_types else None
        markets = (False, True) if spot is None else (spot,)
        for pc in self.providers.values():
            if provs is not None and pc.provider not in provs:
                continue
            for t in pc.types.values():
                if (models is not None and t.gpu_model not in models) or t.gpu_count < min_gpus:
                    continue
                if names is not None and t.name not in names:
                    continue
                for region in t.prices:
                    if regs is not None and region not in regs:
                        continue
                    for market in markets:
                        price = t.price(region, market)
                        if price is not None:
                            yield Offer(pc.provider, region, market, t, price)


__all__ = [
    "BUILTIN_PROVIDERS",
    "Catalog",
    "InstanceType",
    "Offer",
    "ProviderCatalog",
    "RegionPrice",
    "load_builtin",
    "load_file",
    "parse_catalog",
]
