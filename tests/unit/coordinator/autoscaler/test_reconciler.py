"""The instance state machine and the reconciler, on the fake cloud with a FakeClock."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.common.clock import FakeClock
from gpufleet.common.errors import IllegalTransitionError
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, NodePoolConfig, SpotMode
from gpufleet.coordinator.autoscaler.instance import TRANSITIONS, Instance, InstanceStatus, can_reach
from gpufleet.coordinator.autoscaler.reconciler import Reconciler
from gpufleet.coordinator.autoscaler.storage import MemoryInstanceStorage, StoreInstanceStorage
from gpufleet.coordinator.providers.base import InstanceState
from gpufleet.coordinator.providers.catalog import Catalog
from gpufleet.coordinator.providers.fake import FakeProvider
from gpufleet.coordinator.providers.registry import ProviderRegistry
from gpufleet.proto.v1 import agent_pb2 as apb
from tests.unit.coordinator.autoscaler.helpers import FakeCluster, job

S = InstanceStatus


def _pool(**kw: object) -> NodePoolConfig:
    base: dict[str, object] = {"name": "l4", "provider": "fake", "regions": ["local-a"], "instance_types": ["sim-l4x1"]}
    base.update(kw)
    return NodePoolConfig(**base)  # type: ignore[arg-type]


class World:
    def __init__(self, *pools: NodePoolConfig, **config: object) -> None:
        self.clock = FakeClock()
        self.cloud = FakeProvider(clock=self.clock)
        self.cluster = FakeCluster()
        self.storage = MemoryInstanceStorage()
        cfg: dict[str, object] = {"pools": list(pools or [_pool()]), "pending_grace_s": 0, "boot_timeout_s": 600}
        cfg.update(config)
        self.config = AutoscalerConfig(**cfg)  # type: ignore[arg-type]
        self.rec = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        return Reconciler(
            self.config,
            Catalog.builtin(["fake"]),
            ProviderRegistry([self.cloud]),
            self.storage,
            self.cluster.ports(),
            clock=self.clock,
        )

    def live(self) -> list[Instance]:
        return [i for i in self.rec.instances.values() if i.active]

    async def running_cloud(self) -> int:
        return sum(1 for i in await self.cloud.list_instances() if i.state != InstanceState.TERMINATED)

    def boot_agents(self) -> None:
        for i in self.rec.instances.values():
            if i.status == S.BOOTING and i.node not in self.cluster.nodes:
                self.cluster.join(i.node, spot=i.spot)


# ------------------------------------------------------------------------------ state machine


def test_transition_table_is_closed_and_terminal_states_are_ends() -> None:
    assert set(TRANSITIONS) == set(S)
    for dsts in TRANSITIONS.values():
        assert dsts <= set(S)
    assert not TRANSITIONS[S.FAILED] and not TRANSITIONS[S.TERMINATED]
    assert can_reach(S.REQUESTED, S.TERMINATED) and not can_reach(S.TERMINATED, S.REQUESTED)


def test_illegal_transition_raises_and_history_is_kept() -> None:
    inst = Instance("l4-1", "l4", "fake", "local-a", "sim-l4x1", False, 1)
    inst.to(S.BOOTING, at_ms=1, reason="launched")
    inst.to(S.REGISTERED, at_ms=2, reason="joined")
    with pytest.raises(IllegalTransitionError):
        inst.to(S.REQUESTED, at_ms=3, reason="nope")
    assert [(h.src, h.dst) for h in inst.history] == [(S.REQUESTED, S.BOOTING), (S.BOOTING, S.REGISTERED)]
    back = Instance.from_proto(inst.to_proto())
    assert back.status == S.REGISTERED and back.instance_type == "sim-l4x1"


# ------------------------------------------------------------------------------ scale-up and boot


async def test_pending_jobs_get_nodes_that_register() -> None:
    w = World()
    w.cluster.pending = [job("a", model="L4"), job("b", model="L4")]
    await w.rec.reconcile_once()
    assert [i.status for i in w.live()] == [S.BOOTING, S.BOOTING]
    assert await w.running_cloud() == 2
    assert len(await w.storage.load()) == 2  # recorded in storage
    await w.rec.reconcile_once()
    assert await w.running_cloud() == 2  # booting nodes absorb the still-pending jobs: no re-launch
    w.boot_agents()
    await w.rec.reconcile_once()
    assert {i.status for i in w.live()} == {S.REGISTERED}


async def test_a_new_leader_re_drives_records_without_duplicates() -> None:
    w = World()
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    (inst,) = w.live()
    # a record written just before a crash (the launch may or may not have happened): same token, no duplicate
    stale = Instance(
        "l4-crashed",
        "l4",
        "fake",
        "local-a",
        "sim-l4x1",
        False,
        805_000,
        node="l4-crashed",
        created_ms=w.clock.now_ms(),
    )
    await w.storage.save(stale)
    w.cluster.pending = []
    successor = w.new_reconciler()
    await successor.load()
    await successor.reconcile_once()
    await successor.reconcile_once()
    assert await w.running_cloud() == 2
    assert successor.instances[inst.id].status == S.BOOTING
    assert successor.instances["l4-crashed"].status == S.BOOTING


async def test_an_agent_that_never_registers_is_terminated_and_its_offer_backs_off() -> None:
    w = World(_pool(instance_types=["sim-l4x1", "sim-l4x4"]))
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    (first,) = w.live()
    w.clock.advance(601)
    await w.rec.reconcile_once()  # boot timeout: TERMINATING and terminate; jobs still pending -> next offer
    assert w.rec.instances[first.id].status in (S.TERMINATING, S.TERMINATED)
    await w.rec.reconcile_once()
    assert w.rec.instances[first.id].status == S.TERMINATED
    others = [i for i in w.live() if i.id != first.id]
    assert others and all((i.instance_type, i.spot) != (first.instance_type, first.spot) for i in others)


async def test_capacity_errors_move_to_the_next_option_without_spinning() -> None:
    w = World(_pool(regions=["local-a", "local-b"], spot=SpotMode.PREFER))
    for region in ("local-a", "local-b"):
        w.cloud.set_capacity("sim-l4x1", region, True, 0)  # no spot anywhere
    w.cluster.pending = [job("a", model="L4")]
    for _ in range(4):
        await w.rec.reconcile_once()
    (live,) = w.live()
    assert not live.spot  # fell back to on-demand
    failed = [i for i in w.rec.instances.values() if i.status == S.FAILED]
    assert len(failed) == 2 and all(i.spot for i in failed)  # each spot option tried once, then backed off
    assert w.cloud.launch_calls == 3


# ------------------------------------------------------------------------------ scale-down


async def test_idle_node_is_cordoned_drained_then_terminated() -> None:
    w = World(_pool(idle_timeout_s=300))
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    w.boot_agents()
    w.cluster.pending = []
    await w.rec.reconcile_once()
    (inst,) = w.live()
    assert inst.status == S.REGISTERED
    w.clock.advance(299)
    await w.rec.reconcile_once()
    assert inst.status == S.REGISTERED
    w.clock.advance(2)
    await w.rec.reconcile_once()
    assert w.cluster.calls == [("cordon", inst.node), ("drain", inst.node)]
    assert inst.status in (S.DRAINING, S.TERMINATING)
    await w.rec.reconcile_once()
    await w.rec.reconcile_once()
    assert inst.status == S.TERMINATED and await w.running_cloud() == 0


async def test_an_idle_node_pending_work_could_use_is_kept() -> None:
    w = World(_pool(idle_timeout_s=60))
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    w.boot_agents()
    await w.rec.reconcile_once()  # the job is still pending (not placed yet): the node must stay
    w.clock.advance(120)
    await w.rec.reconcile_once()
    assert not w.cluster.calls
    w.cluster.pending = [job("h", model="H100-80GB")]  # pending work it cannot hold does not keep it
    w.clock.advance(61)
    await w.rec.reconcile_once()
    assert [c[0] for c in w.cluster.calls] == ["cordon", "drain"]


async def test_busy_nodes_stay_and_min_nodes_and_budget_hold() -> None:
    w = World(_pool(idle_timeout_s=60, min_nodes=1, disruption_budget=1, max_nodes=5))
    w.cluster.pending = [job(f"j{i}", model="L4") for i in range(4)]
    await w.rec.reconcile_once()
    w.boot_agents()
    nodes = sorted(w.cluster.nodes)
    busy = w.cluster.pending[0]
    w.cluster.run_on(busy, nodes[0])
    w.cluster.pending = []
    await w.rec.reconcile_once()
    w.clock.advance(61)
    await w.rec.reconcile_once()
    assert len([c for c in w.cluster.calls if c[0] == "cordon"]) == 1  # disruption budget 1
    for _ in range(6):
        w.clock.advance(61)
        await w.rec.reconcile_once()
    live = {i.node for i in w.live()}
    assert nodes[0] in live  # running a job: never removed
    assert len(live) == 1  # min_nodes 1 is met by the busy node; the idle ones went, one at a time


async def test_non_preemptible_work_is_never_consolidated() -> None:
    w = World(_pool(idle_timeout_s=60, instance_types=["sim-l4x4"]))
    w.cluster.pending = [job("a", model="L4"), job("b", model="L4")]
    await w.rec.reconcile_once()
    w.boot_agents()
    (node,) = w.cluster.nodes
    w.cluster.nodes[node].inventory.ClearField("gpus")
    w.cluster.join(node, gpus=4)
    w.cluster.join("onprem-1", gpus=4)  # room elsewhere
    w.cluster.run_on(job("pinned", model="L4", preemptible=False), node)
    w.cluster.pending = []
    for _ in range(3):
        w.clock.advance(61)
        await w.rec.reconcile_once()
    assert not w.cluster.calls


async def test_preemptible_work_on_a_little_used_node_is_consolidated() -> None:
    w = World(_pool(idle_timeout_s=60, instance_types=["sim-l4x4"]))
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    w.boot_agents()
    (node,) = [n for n in w.cluster.nodes]
    w.cluster.join(node, gpus=4)
    w.cluster.join("onprem-1", gpus=4)
    w.cluster.run_on(job("mover", model="L4", preemptible=True), node)
    w.cluster.pending = []
    await w.rec.reconcile_once()
    assert w.cluster.calls == [("cordon", node), ("drain", node)]


# ------------------------------------------------------------------------------ spot


async def test_spot_interruption_drains_at_once_and_launches_a_replacement() -> None:
    w = World(_pool(spot=SpotMode.PREFER))
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    w.boot_agents()
    await w.rec.reconcile_once()
    (inst,) = w.live()
    assert inst.spot
    w.cluster.run_on(w.cluster.pending[0], inst.node)
    deadline = w.clock.now_ms() + 120_000
    event = apb.SpotInterruption(provider="fake", kind="terminate", deadline_ms=deadline)
    await w.rec.handle_interruption(inst.node, event)
    assert w.cluster.calls == [("cordon", inst.node), ("drain", inst.node)]
    assert [j.id for j in w.cluster.pending] == ["a"]  # requeued by the drain
    assert inst.status == S.DRAINING and inst.interruption_deadline_ms == deadline
    replacement = [i for i in w.live() if i.id != inst.id]
    assert len(replacement) == 1 and replacement[0].status == S.BOOTING
    assert not replacement[0].spot  # the interrupted spot offer backs off
    w.cloud.interrupt(inst.cloud_id)
    w.clock.advance(61)
    await w.rec.reconcile_once()
    assert inst.status in (S.TERMINATING, S.TERMINATED)
    assert len([i for i in w.live() if i.id != inst.id]) == 1  # the pending job is covered by the replacement


# ------------------------------------------------------------------------------ persistence


async def test_records_persist_in_the_cluster_store(tmp_path: Path) -> None:
    from gpufleet.coordinator.store import open_store

    store = open_store("embedded", tmp_path)
    try:
        storage = StoreInstanceStorage(store)
        inst = Instance("l4-abc", "l4", "fake", "local-a", "sim-l4x1", True, 300_000, node="l4-abc", cloud_id="fake-1")
        inst.to(S.BOOTING, at_ms=5, reason="launched")
        await storage.save(inst)
        kv = await store.get("/gpufleet/instances/l4-abc")
        assert kv is not None
        (back,) = await storage.load()
        assert (back.id, back.status, back.cloud_id, back.spot) == ("l4-abc", S.BOOTING, "fake-1", True)
        # what a new leader needs to carry on: when the state began, its history, a pending interruption
        inst.to(S.REGISTERED, at_ms=9, reason="agent registered")
        inst.to(S.DRAINING, at_ms=12, reason="spot interruption")
        inst.interruption_deadline_ms, inst.replaced = 120_012, True
        await storage.save(inst)
        (back,) = await storage.load()
        assert back.status_ms == 12 and back.interruption_deadline_ms == 120_012 and back.replaced
        assert back.history == inst.history
        await storage.delete("l4-abc")
        assert await storage.load() == []
    finally:
        await store.close()


async def test_a_launched_node_is_labelled_with_its_price_per_gpu_hour() -> None:
    import tomllib

    from gpufleet.common import node_labels
    from gpufleet.coordinator.autoscaler.bootstrap import BootstrapConfig
    from gpufleet.coordinator.providers.base import LaunchRequest, ProviderInstance

    seen: list[LaunchRequest] = []

    class Recording(FakeProvider):
        async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
            seen.append(request)
            return await super().launch(request)

    w = World()
    w.cloud = Recording(clock=w.clock)
    w.rec = Reconciler(
        w.config,
        Catalog.builtin(["fake"]),
        ProviderRegistry([w.cloud]),
        w.storage,
        w.cluster.ports(),
        clock=w.clock,
        bootstrap=BootstrapConfig(coordinators=("127.0.0.1:7070",)),
    )
    w.cluster.pending = [job("a", model="L4")]
    await w.rec.reconcile_once()
    assert len(seen) == 1
    inst = w.live()[0]
    itype = Catalog.builtin(["fake"]).provider("fake").types[inst.instance_type]
    toml_text = seen[0].user_data.split("content: |\n", 1)[1].split("\n  - path:", 1)[0]
    conf = tomllib.loads("\n".join(line.removeprefix("      ") for line in toml_text.splitlines()))
    assert conf["labels"][node_labels.PRICE] == str(inst.price_micros // itype.gpu_count)
    assert inst.price_micros > 0
