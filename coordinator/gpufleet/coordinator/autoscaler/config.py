"""Autoscaler configuration: node pools and loop tunables (pydantic; the coordinator config embeds it).

Validation errors name the field (``autoscaler.pools[0].max_nodes``). ``validate_against(catalog)`` checks that
every pool's provider, regions and instance types exist in the catalog, naming the field and the valid values.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.providers.catalog import Catalog


class SpotMode(enum.StrEnum):
    NEVER = "never"  # on-demand only
    PREFER = "prefer"  # spot when it is cheaper and available, else on-demand
    ONLY = "only"  # spot only


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodePoolConfig(_Strict):
    name: str
    """Pool name: lower-case letters, digits and dashes (it becomes a cloud tag/label)."""
    provider: str
    """A configured provider name (``aws``, ``gcp``, ``azure``, ``fake``, ``static``)."""
    regions: list[str] = Field(min_length=1)
    instance_types: list[str] = Field(default_factory=list)
    """Allowed instance types; empty = every type the catalog lists for the provider."""
    min_nodes: int = Field(default=0, ge=0)
    max_nodes: int = Field(default=10, ge=0)
    spot: SpotMode = SpotMode.PREFER
    max_price_micros_per_hour: int = Field(default=0, ge=0)
    """Ceiling on one node's hourly price (micro-dollars); 0 = none."""
    idle_timeout_s: int = Field(default=600, ge=0)
    """A node that held no job this long is removed (down to ``min_nodes``)."""
    disruption_budget: int = Field(default=1, ge=0)
    """At most this many nodes of the pool are being drained/terminated for scale-down at once."""
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", v):
            raise ValueError("use lower-case letters, digits and dashes, starting with a letter (max 41 chars)")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> NodePoolConfig:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is above max_nodes ({self.max_nodes})")
        return self


class BootstrapSettings(_Strict):
    coordinators: list[str] = Field(min_length=1)
    """host:port addresses new nodes' agents connect to (any replica)."""
    join_token: str = ""
    package: str = "gpufleet[nvml]"
    """pip requirement installed on new nodes (pin a version or give a wheel URL in production)."""


class AutoscalerConfig(_Strict):
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Provider kind -> its settings (see each provider's ``create``), e.g. ``aws: {regions: {...}}``."""
    bootstrap: BootstrapSettings | None = None
    """How new nodes join; required for providers that provision real machines."""
    pools: list[NodePoolConfig] = Field(default_factory=list)
    interval_s: float = Field(default=10.0, gt=0)
    """Seconds between reconcile passes."""
    pending_grace_s: int = Field(default=15, ge=0)
    """A job must have been pending this long before capacity is bought for it."""
    boot_timeout_s: int = Field(default=900, gt=0)
    """An instance whose agent has not registered this long after launch is terminated."""
    request_timeout_s: int = Field(default=300, gt=0)
    """A launch the cloud has not confirmed this long is marked FAILED."""
    drain_timeout_s: int = Field(default=1800, gt=0)
    """A scale-down drain that has not finished this long is terminated anyway (jobs were requeued by the drain)."""
    new_node_grace_s: int = Field(default=120, ge=0)
    """A freshly registered, still empty node counts as capacity for pending jobs this long (no re-launch)."""
    backoff_initial_s: float = Field(default=30.0, gt=0)
    backoff_max_s: float = Field(default=900.0, gt=0)
    max_launches_per_pass: int = Field(default=50, gt=0)
    pricing: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Live price sources to refresh the catalog from, by cloud (``aws``, ``gcp``, ``azure``) with that source's
    settings, e.g. ``[autoscaler.pricing.gcp] api_key = "..."``; empty: the dated data files only. A source that
    fails keeps that cloud's dated prices (and says why in the log)."""
    price_refresh_s: int = Field(default=6 * 3600, gt=0)
    """How often the leader refreshes prices from ``pricing`` (also once when it starts leading)."""

    @field_validator("pricing")
    @classmethod
    def _pricing(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from gpufleet.coordinator.providers.catalog.pricing import LIVE_SOURCES

        unknown = sorted(set(v) - set(LIVE_SOURCES))
        if unknown:
            raise ValueError(f"no live pricing for {', '.join(unknown)}; known: {', '.join(LIVE_SOURCES)}")
        return v

    max_hourly_spend_micros: int = Field(default=0, ge=0)
    """Ceiling on the whole autoscaled fleet's hourly price; 0 = none."""
    verify_with_scheduler_max_jobs: int = Field(default=2000, ge=0)
    """Plans for at most this many pending jobs are re-checked with a full scheduler pass on hypothetical nodes."""
    cluster: str = "gpufleet"

    @model_validator(mode="after")
    def _unique(self) -> AutoscalerConfig:
        names = [p.name for p in self.pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(sorted(dup))}")
        return self

    def pool(self, name: str) -> NodePoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise InvalidInputError(Problem("autoscaler.pools", f"no pool named {name!r}"))


def validate_against(config: AutoscalerConfig, catalog: Catalog) -> None:
    """Raise InvalidInputError (every problem, each naming its field) if a pool names things the catalog lacks."""
    problems: list[Problem] = []
    for i, pool in enumerate(config.pools):
        where = f"autoscaler.pools[{i}]"
        pc = catalog.providers.get(pool.provider)
        if pc is None:
            problems.append(
                Problem(f"{where}.provider", f"no catalog for {pool.provider!r}; known: {', '.join(catalog.providers)}")
            )
            continue
        for r in pool.regions:
            if r not in pc.regions:
                problems.append(
                    Problem(f"{where}.regions", f"{pool.provider} has no region {r!r}; known: {', '.join(pc.regions)}")
                )
        for t in pool.instance_types:
            if t not in pc.types:
                problems.append(
                    Problem(
                        f"{where}.instance_types", f"{pool.provider} has no type {t!r}; known: {', '.join(pc.types)}"
                    )
                )
    if problems:
        raise InvalidInputError(problems)
