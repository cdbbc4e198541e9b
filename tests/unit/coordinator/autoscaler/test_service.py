"""The leader-only Autoscaler: enabling loads what a previous leader left and runs passes; disabling stops them."""

from __future__ import annotations

import asyncio

import pytest

from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, NodePoolConfig
from gpufleet.coordinator.autoscaler.instance import Instance, InstanceStatus
from gpufleet.coordinator.autoscaler.service import Autoscaler
from gpufleet.coordinator.autoscaler.storage import MemoryInstanceStorage
from gpufleet.coordinator.providers.catalog import Catalog
from gpufleet.coordinator.providers.fake import FakeProvider
from gpufleet.coordinator.providers.registry import ProviderRegistry
from tests.unit.coordinator.autoscaler.helpers import FakeCluster, job

POOL = NodePoolConfig(name="l4", provider="fake", regions=["local-a"], instance_types=["sim-l4x1"], spot="never")


async def test_enable_runs_passes_and_disable_stops_them() -> None:
    cloud, cluster, storage = FakeProvider(), FakeCluster(), MemoryInstanceStorage()
    await storage.save(Instance("l4-old", "l4", "fake", "local-a", "sim-l4x1", False, 805_000, node="l4-old"))
    config = AutoscalerConfig(pools=[POOL], interval_s=0.01, pending_grace_s=0)
    scaler = Autoscaler(
        config, ProviderRegistry([cloud]), cluster.ports(), catalog=Catalog.builtin(["fake"]), storage=storage
    )
    cluster.pending = [job("a", model="L4"), job("b", model="L4")]
    await scaler.set_enabled(True)
    for _ in range(200):
        if scaler.passes >= 3:
            break
        await asyncio.sleep(0.01)
    await scaler.set_enabled(False)
    assert not scaler.enabled
    passes = scaler.passes
    await asyncio.sleep(0.05)
    assert scaler.passes == passes  # stopped
    statuses = {i.id: i.status for i in scaler.instances()}
    assert statuses["l4-old"] == InstanceStatus.BOOTING  # the previous leader's record was re-driven
    # the old record's node absorbs one job, so exactly one more node was bought for the other
    assert len([i for i in await cloud.list_instances()]) == 2


def test_pools_naming_unknown_things_are_rejected_naming_the_field() -> None:
    bad = AutoscalerConfig(pools=[NodePoolConfig(name="x", provider="fake", regions=["mars"], instance_types=["nope"])])
    with pytest.raises(InvalidInputError) as e:
        Autoscaler(bad, ProviderRegistry([FakeProvider()]), FakeCluster().ports(), catalog=Catalog.builtin(["fake"]))
    assert "autoscaler.pools[0].regions" in str(e.value) and "autoscaler.pools[0].instance_types" in str(e.value)


async def test_build_from_one_config_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gpufleet.coordinator.autoscaler.service import build_autoscaler
    from gpufleet.coordinator.store import open_store

    raw = {
        "providers": {"fake": {}},
        "bootstrap": {"coordinators": ["10.0.0.1:7070"], "join_token": "t"},
        "pools": [{"name": "l4", "provider": "fake", "regions": ["local-a"], "instance_types": ["sim-l4x1"]}],
        "pending_grace_s": 0,
    }
    config = AutoscalerConfig.model_validate(raw)
    store = open_store("embedded", tmp_path)
    cluster = FakeCluster()
    try:
        scaler = build_autoscaler(config, cluster.ports(), store=store, catalog=Catalog.builtin(["fake"]))
        cluster.pending = [job("a", model="L4")]
        await scaler.run_once()
        (inst,) = scaler.instances()
        assert await store.get(f"/gpufleet/instances/{inst.id}") is not None
    finally:
        await store.close()
    bad = AutoscalerConfig.model_validate({**raw, "providers": {}})
    with pytest.raises(InvalidInputError, match=r"autoscaler\.pools\[0\]\.provider"):
        build_autoscaler(bad, cluster.ports(), catalog=Catalog.builtin(["fake"]))
