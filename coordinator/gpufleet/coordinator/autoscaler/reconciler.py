"""The autoscaler's reconciler: ``sync_from(observed)`` reflects the world into instance records (passive), then
``step_next()`` acts through injected ports (launch, terminate, cordon, drain, persist).

One pass (``reconcile_once``): observe every provider's instances (by our cluster tag) and the coordinator's
nodes; sync; persist changed records; then, in order: drive launches (REQUESTED), time out boots, finish
drains, re-issue terminations, remove orphans, scale down, keep pools at ``min_nodes``, and scale up for pending
jobs with the planner. A spot interruption (``handle_interruption``) cordons and drains the node at once (the
coordinator's drain requeues its jobs, a gang as a whole) and launches a replacement before the node goes.

Records are written before the cloud calls they describe (the record id is the launch token), so a new leader
re-drives what the old one started without duplicates. Provider errors are data: capacity, quota and invalid
requests fail the record and back off that offer; transient errors leave the record to the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gpufleet.common import node_labels
from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import (
    GpuFleetError,
    InsufficientCapacityError,
    InvalidInputError,
    ProviderUnavailableError,
    QuotaExceededError,
)
from gpufleet.coordinator.autoscaler.backoff import OfferBackoff
from gpufleet.coordinator.autoscaler.bootstrap import BootstrapConfig, NodeFacts, render_user_data
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, SpotMode
from gpufleet.coordinator.autoscaler.instance import COUNTED, TERMINAL, Instance, InstanceStatus, new_instance_id
from gpufleet.coordinator.autoscaler.planner import InFlight, Launch, OfferKey, Planner, pool_offers, shape_of
from gpufleet.coordinator.autoscaler.scale_down import choose_removals, jobs_on
from gpufleet.coordinator.autoscaler.storage import InstanceStorage
from gpufleet.coordinator.providers.base import (
    TAG_CLUSTER,
    TAG_POOL,
    TAG_TOKEN,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
)
from gpufleet.coordinator.providers.catalog import Catalog
from gpufleet.coordinator.providers.registry import ProviderRegistry
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import types_pb2 as pb

log = logging.getLogger(__name__)
S = InstanceStatus

LIST_GRACE_MS = 60_000  # a fresh instance may be missing from list answers this long (eventual consistency)
RETENTION_MS = 3_600_000  # FAILED / TERMINATED records are kept this long for `gpufleet` to show
DEFAULT_INTERRUPTION_NOTICE_MS = 120_000


@dataclass(frozen=True, slots=True)
class ClusterPorts:
    """What the autoscaler needs from the coordinator (the lead wires these)."""

    nodes: Callable[[], Sequence[pb.Node]]
    pending_jobs: Callable[[], Sequence[pb.Job]]
    cordon: Callable[[str, str], Awaitable[None]]  # (node, reason)
    drain: Callable[[str, str, int], Awaitable[None]]  # (node, reason, deadline_ms): jobs requeued, gangs whole
    running_jobs: Callable[[], Sequence[pb.Job]] = lambda: ()  # placed jobs (for scale-down decisions)


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # launch, launch-failed, terminate, cordon-drain, scale-up, replace, orphan, ...
    instance_id: str
    detail: str = ""


@dataclass(slots=True)
class Observed:
    cloud: dict[str, list[ProviderInstance]] = field(default_factory=dict)  # provider -> instances (list worked)
    nodes: dict[str, pb.Node] = field(default_factory=dict)


class Reconciler:
    def __init__(
        self,
        config: AutoscalerConfig,
        catalog: Catalog,
        providers: ProviderRegistry,
        storage: InstanceStorage,
        ports: ClusterPorts,
        *,
        bootstrap: BootstrapConfig | None = None,
        clock: Clock | None = None,
        planner: Planner | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.providers = providers
        self.storage = storage
        self.ports = ports
        self.bootstrap = bootstrap
        self.clock = clock or SystemClock()
        self.planner = planner or Planner(catalog)
        self.backoff = OfferBackoff(config.backoff_initial_s, config.backoff_max_s)
        self.instances: dict[str, Instance] = {}
        self.idle_since: dict[str, int] = {}
        self.node_missing_since: dict[str, int] = {}
        self.last_plan_unplaceable: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._busy_nodes: set[str] = set()  # nodes running jobs, refreshed once per pass

    # ------------------------------------------------------------------------------------------ state
    async def load(self) -> None:
        """Read the records a previous leader left (they are re-driven, never duplicated)."""
        self.instances = {i.id: i for i in await self.storage.load()}

    def _move(self, inst: Instance, dst: InstanceStatus, reason: str) -> None:
        inst.to(dst, at_ms=self.clock.now_ms(), reason=reason)
        self._dirty.add(inst.id)

    async def _persist(self) -> None:
        for iid in sorted(self._dirty):
            inst = self.instances.get(iid)
            if inst is not None:
                await self.storage.save(inst)
        self._dirty.clear()

    def _offer_key(self, inst: Instance) -> OfferKey:
        return (inst.provider, inst.region, inst.instance_type, inst.spot)

    # ------------------------------------------------------------------------------------------ observe + sync
    async def observe(self) -> Observed:
        obs = Observed(nodes={n.inventory.name: n for n in self.ports.nodes()})
        for name in self.providers.names():
            try:
                obs.cloud[name] = await self.providers.get(name).list_instances({TAG_CLUSTER: self.config.cluster})
            except GpuFleetError as e:  # no sync for this provider this pass: absence proves nothing
                log.warning("autoscaler: listing %s instances failed: %s", name, e)
        return obs

    def _busy(self, node: pb.Node) -> bool:
        """Jobs present on the node (its own report, or placed there by the coordinator)."""
        return bool(node.job_ids) or node.inventory.name in self._busy_nodes

    def _refresh_busy(self) -> None:
        self._busy_nodes = {a.node for j in self.ports.running_jobs() for a in j.assignments}

    def sync_from(self, obs: Observed) -> list[Action]:
        """Reflect the observed world into the records (no side effects besides the records themselves)."""
        now = self.clock.now_ms()
        self._refresh_busy()
        out: list[Action] = []
        index = {name: _index(listed) for name, listed in obs.cloud.items()}
        for inst in self.instances.values():
            if inst.status in TERMINAL:
                continue
            listed = index.get(inst.provider)
            found = (listed.get(inst.cloud_id) or listed.get(inst.id)) if listed is not None else None
            node = obs.nodes.get(inst.node)
            if inst.status == S.REQUESTED and found is not None and found.state != InstanceState.TERMINATED:
                inst.cloud_id, inst.zone = found.cloud_id, found.zone or inst.zone
                self._move(inst, S.BOOTING, "the cloud reports the instance")
                out.append(Action("booting", inst.id, found.cloud_id))
            if inst.status == S.BOOTING and node is not None:
                self._move(inst, S.REGISTERED, "its agent registered")
                self.idle_since[inst.node] = now
                out.append(Action("registered", inst.id, inst.node))
            gone = listed is not None and (found is None or found.state == InstanceState.TERMINATED)
            if inst.status == S.TERMINATING and gone:
                self._move(inst, S.TERMINATED, "the cloud confirms it is gone")
                out.append(Action("terminated", inst.id))
            elif (
                inst.status in (S.BOOTING, S.REGISTERED, S.DRAINING) and gone and now - inst.status_ms >= LIST_GRACE_MS
            ):
                why = "reclaimed by the cloud (spot)" if inst.spot else "gone from the cloud"
                self._move(inst, S.TERMINATED, why)
                out.append(Action("vanished", inst.id, why))
            if inst.status == S.REGISTERED:
                self._track_node(inst, node, now, out)
        return out

    def _track_node(self, inst: Instance, node: pb.Node | None, now: int, out: list[Action]) -> None:
        if node is None or node.state == pb.NODE_STATE_NOT_READY:
            since = self.node_missing_since.setdefault(inst.node, now)
            if now - since >= self.config.boot_timeout_s * 1000:
                self._move(inst, S.TERMINATING, f"node lost for {(now - since) // 1000}s")
                out.append(Action("node-lost", inst.id))
            return
        self.node_missing_since.pop(inst.node, None)
        if self._busy(node):
            self.idle_since[inst.node] = now
        else:
            self.idle_since.setdefault(inst.node, now)

    # ------------------------------------------------------------------------------------------ act
    async def reconcile_once(self) -> list[Action]:
        obs = await self.observe()
        actions = self.sync_from(obs)
        await self._persist()
        actions += await self.step_next(obs)
        await self._persist()
        return actions

    async def step_next(self, obs: Observed) -> list[Action]:
        now = self.clock.now_ms()
        self._refresh_busy()
        out: list[Action] = []
        for inst in list(self.instances.values()):
            if inst.status == S.REQUESTED:
                out += await self._launch(inst)
            elif inst.status == S.BOOTING and now - inst.status_ms >= self.config.boot_timeout_s * 1000:
                self.backoff.failed(self._offer_key(inst), now, "agent never registered")
                self._move(inst, S.TERMINATING, f"agent did not register within {self.config.boot_timeout_s}s")
            elif inst.status == S.DRAINING:
                out += self._finish_drain(inst, obs, now)
        await self._persist()
        for inst in list(self.instances.values()):
            if inst.status == S.TERMINATING:
                out += await self._terminate(inst)
        out += await self._orphans(obs, now)
        out += await self._scale_down(obs, now)
        out += await self._min_nodes()
        out += await self._scale_up(obs, now)
        out += await self._forget_old(now)
        return out

    async def _launch(self, inst: Instance) -> list[Action]:
        now = self.clock.now_ms()
        key = self._offer_key(inst)
        try:
            provider = self.providers.get(inst.provider)
            user_data = ""
            if self.bootstrap is not None:
                pool = next((p for p in self.config.pools if p.name == inst.pool), None)
                labels = dict(pool.labels) if pool is not None else {}
                labels.setdefault(node_labels.PRICE, str(self._gpu_hour_price(inst)))
                facts = NodeFacts(
                    inst.node, inst.pool, inst.provider, inst.region, inst.instance_type, inst.spot, inst.zone, labels
                )
                user_data = render_user_data(self.bootstrap, facts)
            request = LaunchRequest(
                instance_type=inst.instance_type,
                region=inst.region,
                token=inst.id,
                spot=inst.spot,
                zone=inst.zone,
                user_data=user_data,
                tags={TAG_CLUSTER: self.config.cluster, TAG_POOL: inst.pool},
                max_price_micros=self._max_price(inst),
                node_names=[inst.node],
            )
            launched = await provider.launch(request)
        except (InsufficientCapacityError, QuotaExceededError, InvalidInputError) as e:
            delay = self.backoff.failed(key, now, type(e).__name__)
            self._move(inst, S.FAILED, f"{type(e).__name__}: {e}")
            return [Action("launch-failed", inst.id, f"{e}; offer backs off {delay // 1000}s")]
        except ProviderUnavailableError as e:
            if now - inst.created_ms >= self.config.request_timeout_s * 1000:
                self.backoff.failed(key, now, "provider unavailable")
                self._move(inst, S.FAILED, f"not confirmed within {self.config.request_timeout_s}s: {e}")
                return [Action("launch-failed", inst.id, str(e))]
            return [Action("launch-retry", inst.id, str(e))]
        if not launched:
            return [Action("launch-retry", inst.id, "the provider returned no instance")]
        self.backoff.succeeded(key)
        inst.cloud_id, inst.zone = launched[0].cloud_id, launched[0].zone or inst.zone
        self._move(inst, S.BOOTING, "launched")
        return [Action("launch", inst.id, inst.cloud_id)]

    def _gpu_hour_price(self, inst: Instance) -> int:
        """What one GPU-hour of the machine costs (the offer's price over its GPU count): the node's price label,
        which cost reports charge and job price ceilings are checked against."""
        itype = None
        if inst.provider in self.catalog.providers:
            itype = self.catalog.provider(inst.provider).types.get(inst.instance_type)
        return inst.price_micros // max(1, itype.gpu_count if itype is not None else 1)

    def _max_price(self, inst: Instance) -> int:
        pool = next((p for p in self.config.pools if p.name == inst.pool), None)
        return pool.max_price_micros_per_hour if pool is not None and inst.spot else 0

    def _finish_drain(self, inst: Instance, obs: Observed, now: int) -> list[Action]:
        node = obs.nodes.get(inst.node)
        deadline = inst.interruption_deadline_ms or inst.status_ms + self.config.drain_timeout_s * 1000
        empty = node is None or not self._busy(node)
        if empty or now >= deadline:
            self._move(inst, S.TERMINATING, "drained" if empty else "drain deadline passed")
            return [Action("drained", inst.id)]
        return []

    async def _terminate(self, inst: Instance) -> list[Action]:
        if not inst.cloud_id:  # never confirmed by the cloud: find it by token next pass, or nothing to do
            self._move(inst, S.TERMINATED, "no cloud instance was ever confirmed")
            return [Action("terminated", inst.id, "nothing to delete")]
        try:
            await self.providers.get(inst.provider).terminate([inst.cloud_id])
        except GpuFleetError as e:
            return [Action("terminate-retry", inst.id, str(e))]
        return [Action("terminate", inst.id, inst.cloud_id)]

    async def _orphans(self, obs: Observed, now: int) -> list[Action]:
        """Our-tagged instances with no record (a record lost before its launch was confirmed): terminate."""
        known = {i.id for i in self.instances.values()} | {i.cloud_id for i in self.instances.values()}
        out: list[Action] = []
        for provider, listed in obs.cloud.items():
            stray = [
                p.cloud_id
                for p in listed
                if p.state != InstanceState.TERMINATED
                and p.tags.get(TAG_TOKEN) not in known
                and p.cloud_id not in known
                and now - p.launched_ms >= self.config.request_timeout_s * 1000
            ]
            if stray:
                try:
                    await self.providers.get(provider).terminate(stray)
                    out += [Action("orphan", cid, "terminated: no record") for cid in stray]
                except GpuFleetError as e:
                    log.warning("autoscaler: terminating orphans %s failed: %s", stray, e)
        return out

    def _wanted_by_pending(self, now: int) -> frozenset[str]:
        """Registered nodes of a type some pending job fits on: removing them would only buy them again."""
        grace = self.config.pending_grace_s * 1000
        pending = [j for j in self.ports.pending_jobs() if now - (j.updated_ms or j.created_ms) >= grace]
        if not pending:
            return frozenset()
        resources = {shape_of(j).resources for j in pending}
        keep = set()
        for inst in self.instances.values():
            if inst.status != S.REGISTERED or inst.provider not in self.catalog.providers:
                continue
            itype = self.catalog.provider(inst.provider).types.get(inst.instance_type)
            if itype is not None and any(self.planner.fit.caps(r, [itype]).get(itype.name, 0) > 0 for r in resources):
                keep.add(inst.node)
        return frozenset(keep)

    async def _scale_down(self, obs: Observed, now: int) -> list[Action]:
        removals = choose_removals(
            self.config,
            list(self.instances.values()),
            obs.nodes,
            self.ports.running_jobs(),
            self.idle_since,
            now,
            self.planner.fit.scheduler,
            protect=self._wanted_by_pending(now),
        )
        out: list[Action] = []
        for r in removals:
            reason = f"SCALE_DOWN: {r.message}"
            await self.ports.cordon(r.instance.node, reason)
            await self.ports.drain(r.instance.node, reason, now + self.config.drain_timeout_s * 1000)
            self._move(r.instance, S.DRAINING, reason)
            out.append(Action("cordon-drain", r.instance.id, reason))
        return out

    # ------------------------------------------------------------------------------------------ buying
    def _counted(self) -> dict[str, int]:
        counts: dict[str, int] = {p.name: 0 for p in self.config.pools}
        for i in self.instances.values():
            if i.status in COUNTED and not i.replaced:
                counts[i.pool] = counts.get(i.pool, 0) + 1
        return counts

    def _spend(self) -> int:
        return sum(i.price_micros for i in self.instances.values() if i.status in COUNTED)

    async def _create(self, launch: Launch, reason: str) -> list[Action]:
        out: list[Action] = []
        for _ in range(launch.count):
            iid = new_instance_id(launch.pool)
            inst = Instance(
                id=iid,
                pool=launch.pool,
                provider=launch.provider,
                region=launch.region,
                instance_type=launch.instance_type,
                spot=launch.spot,
                price_micros=launch.price_micros,
                node=iid,
                created_ms=self.clock.now_ms(),
                status_ms=self.clock.now_ms(),
                reason=reason,
            )
            self.instances[iid] = inst
            await self.storage.save(inst)  # recorded BEFORE the cloud call
            out.append(
                Action("scale-up", iid, f"{launch.instance_type} in {launch.provider}/{launch.region}: {reason}")
            )
        for inst in [self.instances[a.instance_id] for a in out]:
            out += await self._launch(inst)
        return out

    async def _min_nodes(self) -> list[Action]:
        out: list[Action] = []
        counts = self._counted()
        now = self.clock.now_ms()
        offers = pool_offers(self.config, self.catalog, self.backoff.active(now))
        for pool in self.config.pools:
            missing = pool.min_nodes - counts.get(pool.name, 0)
            cands = sorted((o for o in offers if o.pool == pool.name), key=lambda o: o.price)
            if missing <= 0 or not cands:
                continue
            o = cands[0].offer
            launch = Launch(pool.name, o.provider, o.region, o.instance_type.name, o.spot, o.price_micros, missing, ())
            out += await self._create(launch, f"pool below min_nodes ({pool.min_nodes})")
        return out

    def _in_flight(self, obs: Observed, now: int, exclude: str = "") -> list[InFlight]:
        out = []
        for i in self.instances.values():
            if i.id == exclude or i.status not in (S.REQUESTED, S.BOOTING, S.REGISTERED):
                continue
            if i.status == S.REGISTERED:
                node = obs.nodes.get(i.node)
                fresh = now - i.status_ms < self.config.new_node_grace_s * 1000
                if node is None or not fresh or self._busy(node):
                    continue
            out.append(InFlight(i.id, i.pool, i.provider, i.region, i.instance_type, i.spot))
        return out

    async def _scale_up(self, obs: Observed, now: int) -> list[Action]:
        grace = self.config.pending_grace_s * 1000
        pending = [j for j in self.ports.pending_jobs() if now - (j.updated_ms or j.created_ms) >= grace]
        if not pending or not self.config.pools:
            return []
        plan = self.planner.plan(
            self.config,
            pending,
            in_flight=self._in_flight(obs, now),
            pool_sizes=self._counted(),
            backoff=self.backoff.active(now),
            current_spend_micros=self._spend(),
        )
        self.last_plan_unplaceable = dict(plan.unplaceable)
        out: list[Action] = []
        for launch in plan.launches:
            out += await self._create(launch, f"{len(launch.job_ids)} pending job(s)")
        return out

    async def _forget_old(self, now: int) -> list[Action]:
        out = []
        for inst in list(self.instances.values()):
            if inst.status in TERMINAL and now - inst.status_ms >= RETENTION_MS:
                await self.storage.delete(inst.id)
                del self.instances[inst.id]
                self.idle_since.pop(inst.node, None)
                out.append(Action("forget", inst.id))
        return out

    # ------------------------------------------------------------------------------------------ spot
    async def handle_interruption(self, node_name: str, event: apb.SpotInterruption) -> list[Action]:
        """The node's cloud will reclaim it: cordon and drain now, and launch a replacement before it goes."""
        now = self.clock.now_ms()
        deadline = event.deadline_ms or now + DEFAULT_INTERRUPTION_NOTICE_MS
        reason = f"SPOT_INTERRUPTION: {event.kind or 'notice'} from {event.provider or 'cloud'}"
        displaced = self._displaced(node_name)  # before the drain moves them
        await self.ports.cordon(node_name, reason)
        await self.ports.drain(node_name, reason, deadline)
        out = [Action("cordon-drain", node_name, reason)]
        inst = next((i for i in self.instances.values() if i.node == node_name and i.active), None)
        if inst is None:
            return out  # not an autoscaled node: nothing to replace
        inst.interruption_deadline_ms = deadline
        self.backoff.failed(self._offer_key(inst), now, "spot interruption")
        if inst.status in (S.REGISTERED, S.BOOTING):
            self._move(inst, S.DRAINING if inst.status == S.REGISTERED else S.TERMINATING, reason)
        if inst.replaced:
            await self._persist()
            return out
        inst.replaced = True
        self._dirty.add(inst.id)
        out += await self._replace(inst, displaced, now)
        await self._persist()
        return out

    def _displaced(self, node_name: str) -> list[pb.Job]:
        """Pending copies of the jobs on ``node_name`` (what a replacement must hold)."""
        node = next((n for n in self.ports.nodes() if n.inventory.name == node_name), None)
        if node is None:
            return []
        running = self.ports.running_jobs()
        present = jobs_on(node, running)
        out = []
        for j in running:
            if j.id in present:
                c = pb.Job()
                c.CopyFrom(j)
                del c.assignments[:]
                c.state = pb.JOB_STATE_PENDING
                out.append(c)
        return out

    async def _replace(self, inst: Instance, displaced: Sequence[pb.Job], now: int) -> list[Action]:
        self._refresh_busy()
        if not displaced:  # nothing to carry over: a like-for-like node keeps the pool's size
            pool = next((p for p in self.config.pools if p.name == inst.pool), None)
            if pool is None:
                return [Action("replace-skipped", inst.id, f"pool {inst.pool!r} is no longer configured")]
            offers = [
                o
                for o in pool_offers(self.config, self.catalog, self.backoff.active(now))
                if o.pool == inst.pool and o.offer.instance_type.name == inst.instance_type
            ]
            if pool.spot == SpotMode.ONLY:
                offers = [o for o in offers if o.offer.spot]
            if not offers:
                return [Action("replace-skipped", inst.id, "no offer for a like-for-like replacement")]
            o = min(offers, key=lambda o: o.price).offer
            launch = Launch(inst.pool, o.provider, o.region, o.instance_type.name, o.spot, o.price_micros, 1, ())
            return await self._create(launch, f"replaces interrupted {inst.id}")
        obs = Observed(nodes={n.inventory.name: n for n in self.ports.nodes()})
        plan = self.planner.plan(
            self.config,
            list(displaced),
            in_flight=self._in_flight(obs, now, exclude=inst.id),
            pool_sizes=self._counted(),
            backoff=self.backoff.active(now),
            current_spend_micros=self._spend() - inst.price_micros,
        )
        out: list[Action] = []
        for launch in plan.launches:
            out += await self._create(launch, f"replaces interrupted {inst.id}")
        return out


def _index(listed: Sequence[ProviderInstance]) -> dict[str, ProviderInstance]:
    """Listed instances by cloud id and by launch token (= record id); a live one wins over a terminated one."""
    out: dict[str, ProviderInstance] = {}
    for p in sorted(listed, key=lambda p: p.state != InstanceState.TERMINATED):
        out[p.cloud_id] = p
        token = p.tags.get(TAG_TOKEN)
        if token:
            out[token] = p
    return out
