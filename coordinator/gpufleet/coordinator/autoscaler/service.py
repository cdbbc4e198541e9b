"""``Autoscaler``: the leader-only loop (LeaderOnly, interfaces.md §2) around the reconciler.

The coordinator registers it on the leader elector::

    autoscaler = Autoscaler(config, registry, ClusterPorts(nodes=..., pending_jobs=..., cordon=..., drain=...,
                            running_jobs=...), storage=StoreInstanceStorage(store, elector.leader_txn))
    elector.add_subsystem(autoscaler)
    # on an agent's SpotInterruption event:
    await autoscaler.handle_interruption(node_name, event)

or, from one config section, ``build_autoscaler(config, ports, store=store, leader_write=elector.leader_txn)``.

``set_enabled(True)`` loads the instance records (what a previous leader launched) and starts the loop;
``set_enabled(False)`` stops it before returning. A failed pass is logged and the next one runs on schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import GpuFleetError, InvalidInputError, NotLeaderError, Problem
from gpufleet.coordinator.autoscaler.bootstrap import BootstrapConfig
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, validate_against
from gpufleet.coordinator.autoscaler.instance import Instance
from gpufleet.coordinator.autoscaler.reconciler import Action, ClusterPorts, Reconciler
from gpufleet.coordinator.autoscaler.storage import (
    InstanceStorage,
    LeaderWrite,
    MemoryInstanceStorage,
    StoreInstanceStorage,
)
from gpufleet.coordinator.providers.catalog import BUILTIN_PROVIDERS, Catalog
from gpufleet.coordinator.providers.catalog.pricing import DataFilePricing, PricingSource, build_catalog, live_pricing
from gpufleet.coordinator.providers.registry import ProviderRegistry, create_provider
from gpufleet.coordinator.store import ClusterStore
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import cluster_pb2 as cpb

log = logging.getLogger(__name__)


class Autoscaler:
    def __init__(
        self,
        config: AutoscalerConfig,
        providers: ProviderRegistry,
        ports: ClusterPorts,
        *,
        catalog: Catalog | None = None,
        storage: InstanceStorage | None = None,
        bootstrap: BootstrapConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.catalog = catalog or Catalog.builtin()
        validate_against(config, self.catalog)
        self.config = config
        self.reconciler = Reconciler(
            config,
            self.catalog,
            providers,
            storage or MemoryInstanceStorage(),
            ports,
            bootstrap=bootstrap,
            clock=clock or SystemClock(),
        )
        self._task: asyncio.Task[None] | None = None
        self._prices_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass or interruption at a time
        self.passes = 0

    @property
    def enabled(self) -> bool:
        return self._task is not None and not self._task.done()

    async def set_enabled(self, enabled: bool) -> None:
        if enabled and not self.enabled:
            await self.reconciler.load()
            self._task = asyncio.create_task(self._loop(), name="autoscaler")
            if self.config.pricing:
                self._prices_task = asyncio.create_task(self._price_loop(), name="autoscaler-prices")
        elif not enabled and self._task is not None:
            for task in (self._task, self._prices_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._task = self._prices_task = None

    def use_catalog(self, catalog: Catalog) -> None:
        """Plan with ``catalog`` from the next pass on (e.g. after a price refresh)."""
        validate_against(self.config, catalog)
        self.catalog = catalog
        self.reconciler.catalog = catalog
        self.reconciler.planner.catalog = catalog

    async def refresh_prices(self) -> Catalog:
        """Rebuild the catalog from the configured live sources (dated data for the other clouds) and use it."""
        sources: list[PricingSource] = [live_pricing(p, s) for p, s in self.config.pricing.items()]
        live = {s.provider for s in sources}
        sources += [DataFilePricing(p) for p in BUILTIN_PROVIDERS if p not in live]
        catalog = await build_catalog(sources)
        async with self._lock:
            self.use_catalog(catalog)
        return catalog

    async def _price_loop(self) -> None:
        while True:
            try:
                await self.refresh_prices()
                log.info("autoscaler: prices refreshed from %s", ", ".join(self.config.pricing))
            except GpuFleetError as e:  # e.g. the refreshed catalog no longer offers a pool's instance type
                log.warning("autoscaler: price refresh not used: %s", e)
            await asyncio.sleep(self.config.price_refresh_s)

    async def run_once(self) -> list[Action]:
        async with self._lock:
            self.passes += 1
            return await self.reconciler.reconcile_once()

    async def handle_interruption(self, node_name: str, event: apb.SpotInterruption) -> list[Action]:
        async with self._lock:
            return await self.reconciler.handle_interruption(node_name, event)

    def instances(self) -> list[Instance]:
        return sorted(self.reconciler.instances.values(), key=lambda i: i.created_ms)

    def cloud_instances(self) -> list[cpb.CloudInstance]:
        """The records as the v1 API shows them (``ClusterServicer.instances`` can be set to this)."""
        return [i.to_proto() for i in self.instances()]

    async def _loop(self) -> None:
        while True:
            try:
                for action in await self.run_once():
                    log.info("autoscaler: %s %s %s", action.kind, action.instance_id, action.detail)
            except NotLeaderError:
                log.info("autoscaler: no longer the leader; pausing until enabled again")
                return
            except GpuFleetError as e:
                log.warning("autoscaler pass failed: %s", e)
            await asyncio.sleep(self.config.interval_s)


def build_autoscaler(
    config: AutoscalerConfig,
    ports: ClusterPorts,
    *,
    store: ClusterStore | None = None,
    leader_write: LeaderWrite | None = None,
    catalog: Catalog | None = None,
    clock: Clock | None = None,
) -> Autoscaler:
    """Everything from one config section: providers (``config.providers``, decorated by the registry), records
    in ``store`` (fenced by ``leader_write``, e.g. ``elector.leader_txn``; in memory without a store), bootstrap.
    Raises InvalidInputError naming the field for a pool whose provider is not configured."""
    problems = [
        Problem(f"autoscaler.pools[{i}].provider", f"{p.provider!r} is not under autoscaler.providers")
        for i, p in enumerate(config.pools)
        if p.provider not in config.providers
    ]
    if problems:
        raise InvalidInputError(problems)
    registry = ProviderRegistry(create_provider(kind, settings) for kind, settings in config.providers.items())
    bootstrap = None
    if config.bootstrap is not None:
        b = config.bootstrap
        bootstrap = BootstrapConfig(tuple(b.coordinators), b.join_token, b.package)
    storage: InstanceStorage = (
        StoreInstanceStorage(store, leader_write, (clock or SystemClock()).now_ms)
        if store is not None
        else MemoryInstanceStorage()
    )
    return Autoscaler(config, registry, ports, catalog=catalog, storage=storage, bootstrap=bootstrap, clock=clock)
