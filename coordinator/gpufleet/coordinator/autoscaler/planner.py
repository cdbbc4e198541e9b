"""Scale-up planning: the cheapest set of new nodes on which the pending jobs would be placed.

How (see docs/architecture/autoscaler.md):

1. **Shapes.** Pending jobs are grouped by shape (resources + placement policy + gang size); 10,000 jobs are
   usually a few dozen shapes, and everything below works per shape, not per job.
2. **Fit from the real scheduler.** How many jobs of one resource shape a node of an instance type holds is asked
   of :class:`~gpufleet.coordinator.scheduler.Scheduler` itself: one ``schedule`` call per shape over a
   ``ClusterState`` holding one hypothetical ``pb.Node`` per candidate type, with as many copies of the job as
   could possibly fit. Answers are cached (per shape and type) across passes.
3. **Where allowed.** Offers come from the node pools (provider, region, type, market, price) minus offers in
   backoff and pools at ``max_nodes``; a job's placement policy (providers, regions, spot, price per GPU-hour)
   filters them, as the scheduler's PlacementConstraints plugin would.
4. **Packing.** Every node has ``UNITS`` capacity units; a job of a shape that fits ``c`` times on a type takes
   ``ceil(UNITS / c)`` of them, so mixed contents never exceed what the scheduler said (conservative). Gangs go
   first, each into one provider and region, one member per node; then shapes from the largest, each first
   filling nodes already on their way (launched, booting, or registered and still empty) and nodes opened
   earlier in this plan, then opening the offer with the lowest price per job it would hold. A last pass swaps
   each new node for the cheapest type in the same location that still holds its contents.
5. **Check.** Optionally the whole pending set is scheduled once more onto the existing-plus-planned hypothetical
   nodes, and jobs the scheduler would still leave out are reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpufleet.common import node_labels
from gpufleet.common.errors import InvalidInputError
from gpufleet.common.gpu_models import MODELS, GpuModel, plan_layout
from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, NodePoolConfig, SpotMode
from gpufleet.coordinator.providers.catalog import Catalog, InstanceType, Offer
from gpufleet.coordinator.scheduler import ClusterState, Scheduler
from gpufleet.coordinator.scheduler.sim.build import set_mig_layout
from gpufleet.proto.v1 import types_pb2 as pb

UNITS = 720720  # lcm(1..16): a node's capacity; exact footprints for up to 16 jobs per node
PROBE_LIMIT = 64  # at most this many copies per type when asking the scheduler
PRICE_LABEL = node_labels.PRICE

ResourceKey = tuple[int, int, tuple[str, ...], str, int, int]
OfferKey = tuple[str, str, str, bool]  # provider, region, type, spot


@dataclass(frozen=True, slots=True)
class PoolOffer:
    pool: str
    offer: Offer

    @property
    def key(self) -> OfferKey:
        return self.offer.key

    @property
    def location(self) -> tuple[str, str]:
        return (self.offer.provider, self.offer.region)

    @property
    def price(self) -> int:
        return self.offer.price_micros

    @property
    def itype(self) -> InstanceType:
        return self.offer.instance_type


@dataclass(frozen=True, slots=True)
class Shape:
    resources: ResourceKey
    providers: tuple[str, ...]
    regions: tuple[str, ...]
    spot: int
    max_price_per_gpu: int
    nodes: int

    @property
    def gpu_milli(self) -> int:
        return self.resources[0] if not self.resources[3] else 1000


def shape_of(job: pb.Job) -> Shape:
    r, p = job.spec.resources, job.spec.placement
    res: ResourceKey = (
        int(r.gpu_milli),
        int(r.gpu_memory_mib),
        tuple(sorted(set(r.gpu_models))),
        r.mig_profile,
        int(r.cpu_milli),
        int(r.memory_mib),
    )
    return Shape(
        res,
        tuple(sorted(p.providers)),
        tuple(sorted(p.regions)),
        int(p.spot),
        int(p.max_price_micros_per_gpu_hour),
        max(1, job.spec.nodes),
    )


@dataclass(slots=True)
class Bin:
    """A node in the plan: one that will be launched, or one already on its way (``instance_id`` set)."""

    offer: PoolOffer
    used: int = 0
    jobs: list[str] = field(default_factory=list)
    contents: dict[Shape, int] = field(default_factory=dict)
    instance_id: str = ""

    def free(self) -> int:
        return UNITS - self.used


@dataclass(frozen=True, slots=True)
class Launch:
    """``count`` new nodes of one offer in one pool, and the jobs expected to land on them."""

    pool: str
    provider: str
    region: str
    instance_type: str
    spot: bool
    price_micros: int
    count: int
    job_ids: tuple[str, ...]


@dataclass(slots=True)
class ScalePlan:
    launches: list[Launch] = field(default_factory=list)
    unplaceable: dict[str, str] = field(default_factory=dict)  # job id -> why no new node would help
    absorbed: dict[str, list[str]] = field(default_factory=dict)  # instance id on its way -> jobs it will take
    new_cost_micros_per_hour: int = 0
    scheduler_unplaced: dict[str, str] = field(default_factory=dict)  # from the optional full check

    @property
    def node_count(self) -> int:
        return sum(launch.count for launch in self.launches)


@dataclass(frozen=True, slots=True)
class InFlight:
    """Capacity on its way: an instance launched/booting, or registered and still empty."""

    instance_id: str
    pool: str
    provider: str
    region: str
    instance_type: str
    spot: bool


# ---------------------------------------------------------------------------------------------- fit oracle


def hypothetical_node(
    name: str, itype: InstanceType, provider: str, region: str, spot: bool, price: int, mig_profile: str = ""
) -> pb.Node:
    """The ``pb.Node`` an instance of ``itype`` would register as (all GPUs healthy). With ``mig_profile``, every
    MIG-capable GPU is laid out with as many slices of that profile as fit (the re-layout the scheduler would ask
    the agent for), so the scheduler counts slices instead of waiting on a re-layout; otherwise MIG is off."""
    model = MODELS.get(itype.gpu_model)
    inv = pb.NodeInventory(
        name=name,
        hostname=name,
        address=f"{name}.planned",
        cpu_milli=itype.vcpus * 1000,
        memory_mib=itype.memory_mib,
        provider=provider,
        region=region,
        spot=spot,
        instance_type=itype.name,
        gpu_backend="planned",
    )
    inv.labels[PRICE_LABEL] = str(price // max(1, itype.gpu_count))
    for g in range(itype.gpu_count):
        inv.gpus.add(
            index=g,
            uuid=f"GPU-{name}-{g}",
            model=itype.gpu_model,
            product_name=itype.gpu_model,
            memory_mib=itype.gpu_memory_mib,
            mig_capable=bool(model and model.mig_capable),
            mig_mode=pb.MIG_MODE_DISABLED,
            healthy=True,
            numa_node=g // 4,
            mps_available=True,
        )
    if mig_profile and model is not None and model.mig_capable:
        layout = _full_layout(model, mig_profile)
        for gpu in inv.gpus:
            if layout:
                gpu.mig_mode = pb.MIG_MODE_ENABLED
                set_mig_layout(gpu, layout, name)
    return pb.Node(inventory=inv, state=pb.NODE_STATE_READY)


def _full_layout(model: GpuModel, profile: str) -> list[str]:
    """The most slices of ``profile`` one GPU of ``model`` holds ([] when the model has no such profile)."""
    if profile not in {p.name for p in model.mig_profiles}:
        return []
    for n in range(model.profile(profile).max_instances, 0, -1):
        try:
            plan_layout(model, [profile] * n)
        except InvalidInputError:
            continue
        return [profile] * n
    return []


def _upper_bound(res: ResourceKey, itype: InstanceType) -> int:
    milli, _gmem, models, mig, cpu, mem = res
    if models and itype.gpu_model not in models:
        return 0
    if mig:
        gpu_bound = itype.gpu_count * 7
    elif milli == 0:
        gpu_bound = PROBE_LIMIT
    elif milli < 1000:
        gpu_bound = itype.gpu_count * (1000 // milli)
    else:
        gpu_bound = itype.gpu_count // (milli // 1000)
    cpu_bound = itype.vcpus * 1000 // cpu if cpu else PROBE_LIMIT
    mem_bound = itype.memory_mib // mem if mem else PROBE_LIMIT
    return max(0, min(gpu_bound, cpu_bound, mem_bound, PROBE_LIMIT))


class SchedulerFit:
    """How many jobs of a resource shape fit on one node of a type, answered by the real scheduler (cached)."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.scheduler = scheduler or Scheduler()
        self._cache: dict[tuple[ResourceKey, str, str], int] = {}
        self.scheduler_calls = 0

    def caps(self, res: ResourceKey, types: Iterable[InstanceType]) -> dict[str, int]:
        out: dict[str, int] = {}
        missing: list[InstanceType] = []
        for t in types:
            hit = self._cache.get((res, t.provider, t.name))
            if hit is None:
                missing.append(t)
            else:
                out[t.name] = hit
        probes = [(t, _upper_bound(res, t)) for t in missing]
        for t, ub in probes:
            if ub == 0:
                self._cache[(res, t.provider, t.name)] = out[t.name] = 0
        probes = [(t, ub) for t, ub in probes if ub > 0]
        if probes:
            state = ClusterState()
            for t, _ in probes:
                name = f"probe/{t.provider}/{t.name}"
                state.upsert_node(hypothetical_node(name, t, t.provider, "probe", False, 0, mig_profile=res[3]))
            self.scheduler_calls += 1
            # ids unique per probe: the scheduler may memoize parsed jobs by id (ids are unique in a real fleet)
            jobs = [_probe_job(res, i, self.scheduler_calls) for i in range(sum(ub for _, ub in probes))]
            plan = self.scheduler.schedule(state, jobs, now_ms=0)
            placed: dict[str, int] = defaultdict(int)
            for p in plan.placements:
                for a in p.assignments:
                    placed[a.node] += 1
            for t, _ in probes:
                n = placed.get(f"probe/{t.provider}/{t.name}", 0)
                self._cache[(res, t.provider, t.name)] = out[t.name] = n
        return out


def _probe_job(res: ResourceKey, i: int, call: int = 0) -> pb.Job:
    milli, gmem, models, mig, cpu, mem = res
    spec = pb.JobSpec(
        name=f"probe-{i}",
        command=["true"],
        resources=pb.Resources(
            gpu_milli=milli,
            gpu_memory_mib=gmem,
            gpu_models=list(models),
            mig_profile=mig,
            cpu_milli=cpu,
            memory_mib=mem,
        ),
        nodes=1,
        priority="normal",
    )
    return pb.Job(id=f"probe-{call}-{i:05d}", spec=spec, state=pb.JOB_STATE_PENDING, priority_value=0)


# ---------------------------------------------------------------------------------------------- offers


def pool_offers(config: AutoscalerConfig, catalog: Catalog, excluded: Iterable[OfferKey] = ()) -> list[PoolOffer]:
    """Every (pool, type, region, market) the pools allow, minus ``excluded`` (offers in backoff)."""
    skip = set(excluded)
    out: list[PoolOffer] = []
    for pool in config.pools:
        if pool.provider not in catalog.providers:
            continue
        markets = {SpotMode.NEVER: False, SpotMode.ONLY: True}.get(pool.spot)
        for o in catalog.offers(
            providers=[pool.provider],
            regions=pool.regions,
            spot=markets,
            instance_types=pool.instance_types or None,
        ):
            if pool.max_price_micros_per_hour and o.price_micros > pool.max_price_micros_per_hour:
                continue
            if o.key in skip:
                continue
            out.append(PoolOffer(pool.name, o))
    return out


def allowed(shape: Shape, po: PoolOffer) -> bool:
    o = po.offer
    if shape.providers and o.provider not in shape.providers:
        return False
    if shape.regions and o.region not in shape.regions and f"{o.provider}/{o.region}" not in shape.regions:
        return False
    if shape.spot == pb.SPOT_POLICY_NEVER and o.spot:
        return False
    if shape.spot == pb.SPOT_POLICY_REQUIRED and not o.spot:
        return False
    return not (
        shape.max_price_per_gpu and o.price_micros // max(1, o.instance_type.gpu_count) > shape.max_price_per_gpu
    )


# ---------------------------------------------------------------------------------------------- planner


class Planner:
    def __init__(self, catalog: Catalog, fit: SchedulerFit | None = None) -> None:
        self.catalog = catalog
        self.fit = fit or SchedulerFit()

    def plan(
        self,
        config: AutoscalerConfig,
        pending: Sequence[pb.Job],
        *,
        in_flight: Sequence[InFlight] = (),
        pool_sizes: Mapping[str, int] | None = None,
        backoff: Iterable[OfferKey] = (),
        current_spend_micros: int = 0,
        verify: bool | None = None,
    ) -> ScalePlan:
        offers = pool_offers(config, self.catalog, backoff)
        room = {p.name: p.max_nodes - (pool_sizes or {}).get(p.name, 0) for p in config.pools}
        budget = config.max_hourly_spend_micros - current_spend_micros if config.max_hourly_spend_micros else None
        run = _Run(self, offers, room, budget, config.max_launches_per_pass)
        run.add_in_flight(in_flight, config.pools)
        by_shape: dict[Shape, list[str]] = defaultdict(list)
        for job in pending:
            by_shape[shape_of(job)].append(job.id)
        for shape in sorted(by_shape, key=lambda s: (-s.nodes, -s.gpu_milli, -s.resources[4])):
            run.place_shape(shape, by_shape[shape])
        run.downsize()
        result = run.result()
        check = verify if verify is not None else len(pending) <= config.verify_with_scheduler_max_jobs
        if check and (result.launches or result.absorbed):
            result.scheduler_unplaced = self.check(run.bins, pending)
        return result

    def check(self, bins: Sequence[Bin], pending: Sequence[pb.Job]) -> dict[str, str]:
        """Schedule every pending job onto the planned nodes; what the scheduler would still leave out."""
        state = ClusterState()
        for i, b in enumerate(bins):
            o = b.offer.offer
            mig = next((shape.resources[3] for shape in b.contents if shape.resources[3]), "")
            node = hypothetical_node(f"planned-{i}", o.instance_type, o.provider, o.region, o.spot, o.price_micros, mig)
            state.upsert_node(node)
        plan = self.fit.scheduler.schedule(state, list(pending), now_ms=0)
        planned_ids = {j for b in bins for j in b.jobs}
        return {k: v for k, v in plan.unplaced.items() if k in planned_ids}


class _Run:
    """One planning pass (mutable working state)."""

    def __init__(
        self, planner: Planner, offers: list[PoolOffer], room: dict[str, int], budget: int | None, max_new: int
    ) -> None:
        self.planner = planner
        self.offers = offers
        self.room = room
        self.budget = budget
        self.max_new = max_new
        self.bins: list[Bin] = []
        self.new_bins = 0
        self.unplaceable: dict[str, str] = {}
        self._caps: dict[Shape, dict[OfferKey, int]] = {}

    # ---------------------------------------------------------------- capacities
    def caps(self, shape: Shape) -> dict[OfferKey, int]:
        got = self._caps.get(shape)
        if got is None:
            cands = [po for po in self.offers if allowed(shape, po)]
            types = {(po.itype.provider, po.itype.name): po.itype for po in cands}
            by_type = self.planner.fit.caps(shape.resources, types.values())
            got = {po.key: by_type.get(po.itype.name, 0) for po in cands}
            got = {k: v for k, v in got.items() if v > 0}
            self._caps[shape] = got
        return got

    def cap_for(self, shape: Shape, po: PoolOffer) -> int:
        """Jobs of ``shape`` one node of ``po`` holds (0 when the job's policy rules the offer out)."""
        if not allowed(shape, po):
            return 0
        cap = self.caps(shape).get(po.key)
        if cap is None:  # a node on its way whose offer is not (or no longer) in the pools' list
            cap = self.planner.fit.caps(shape.resources, [po.itype]).get(po.itype.name, 0)
        return cap

    def add_in_flight(self, in_flight: Sequence[InFlight], pools: Sequence[NodePoolConfig]) -> None:
        pool_names = {p.name for p in pools}
        for f in in_flight:
            if f.provider not in self.planner.catalog.providers:
                continue
            pc = self.planner.catalog.provider(f.provider)
            itype = pc.types.get(f.instance_type)
            if itype is None:
                continue
            price = itype.price(f.region, f.spot) or 0
            pool = f.pool if f.pool in pool_names else ""
            self.bins.append(
                Bin(PoolOffer(pool, Offer(f.provider, f.region, f.spot, itype, price)), instance_id=f.instance_id)
            )

    # ---------------------------------------------------------------- opening nodes
    def _can_open(self, po: PoolOffer, count: int = 1) -> int:
        n = min(count, self.room.get(po.pool, 0), self.max_new - self.new_bins)
        if self.budget is not None:
            n = min(n, self.budget // po.price if po.price else n)
        return max(0, n)

    def _open(self, po: PoolOffer) -> Bin:
        b = Bin(po)
        self.bins.append(b)
        self.new_bins += 1
        self.room[po.pool] -= 1
        if self.budget is not None:
            self.budget -= po.price
        return b

    @staticmethod
    def _put(b: Bin, shape: Shape, units: int, jobs: Sequence[str]) -> None:
        b.used += units * len(jobs)
        b.jobs.extend(jobs)
        b.contents[shape] = b.contents.get(shape, 0) + len(jobs)

    # ---------------------------------------------------------------- placing
    def place_shape(self, shape: Shape, job_ids: list[str]) -> None:
        caps = self.caps(shape)
        if not caps:
            why = "no node type in any pool can hold it (GPU model, count, memory or placement policy)"
            for j in job_ids:
                self.unplaceable[j] = why
            return
        if shape.nodes > 1:
            self._place_gangs(shape, job_ids, caps)
            return
        left = self._fill_open(shape, job_ids)
        while left:
            opened = self._open_best(shape, left, caps)
            if not opened:
                for j in left:
                    self.unplaceable[j] = (
                        "pools are at max_nodes, spend ceiling or launch limit, or offers are backing off"
                    )
                return
            left = left[opened:]

    def _fill_open(self, shape: Shape, job_ids: list[str]) -> list[str]:
        left = job_ids
        for b in self.bins:
            if not left:
                break
            cap = self.cap_for(shape, b.offer)
            if cap <= 0:
                continue
            units = -(-UNITS // cap)
            k = min(b.free() // units, len(left))
            if k > 0:
                self._put(b, shape, units, left[:k])
                left = left[k:]
        return left

    def _open_best(self, shape: Shape, left: list[str], caps: Mapping[OfferKey, int]) -> int:
        n = len(left)
        best: PoolOffer | None = None
        best_score: tuple[float, int] = (math.inf, 0)
        for po in self.offers:
            cap = caps.get(po.key, 0)
            if cap <= 0 or not self._can_open(po):
                continue
            score = (po.price / min(cap, n), po.price)
            if score < best_score:
                best, best_score = po, score
        if best is None:
            return 0
        cap = caps[best.key]
        units = -(-UNITS // cap)
        many = max(1, n // cap)
        count = self._can_open(best, many)
        placed = 0
        for _ in range(count):
            b = self._open(best)
            k = min(cap, n - placed)
            self._put(b, shape, units, left[placed : placed + k])
            placed += k
        return placed

    def _place_gangs(self, shape: Shape, job_ids: list[str], caps: Mapping[OfferKey, int]) -> None:
        """Each gang: all members in one provider and region, one member per node, at the least new cost."""
        members = shape.nodes
        locations = sorted({po.location for po in self.offers if caps.get(po.key, 0) > 0})
        open_by_loc: dict[tuple[str, str], list[Bin]] = defaultdict(list)
        for b in self.bins:
            if self._fits(b, shape):
                open_by_loc[b.offer.location].append(b)
        ranked = {
            loc: sorted(
                (po for po in self.offers if po.location == loc and caps.get(po.key, 0) > 0), key=lambda p: p.price
            )
            for loc in locations
        }
        for job_id in job_ids:
            best: tuple[int, tuple[str, str], list[Bin]] | None = None
            for loc in locations:
                usable = [b for b in open_by_loc[loc] if self._fits(b, shape)][:members]
                open_by_loc[loc] = [b for b in open_by_loc[loc] if self._fits(b, shape)]
                need = members - len(usable)
                cheapest = next((po for po in ranked[loc] if self._can_open(po)), None)
                if need and (cheapest is None or self._can_open(cheapest, need) < need):
                    continue
                cost = need * (cheapest.price if cheapest else 0)
                if best is None or cost < best[0]:
                    best = (cost, loc, usable)
            if best is None:
                self.unplaceable[job_id] = f"no single provider and region can hold all {members} members of the gang"
                continue
            _, loc, usable = best
            for b in usable:
                self._put(b, shape, -(-UNITS // self.cap_for(shape, b.offer)), [job_id])
            for _ in range(members - len(usable)):
                po = next((po for po in ranked[loc] if self._can_open(po)), None)
                assert po is not None
                b = self._open(po)
                self._put(b, shape, -(-UNITS // caps[po.key]), [job_id])
                open_by_loc[loc].append(b)

    def _fits(self, b: Bin, shape: Shape) -> bool:
        cap = self.cap_for(shape, b.offer)
        return cap > 0 and b.free() >= -(-UNITS // cap)

    # ---------------------------------------------------------------- improving
    def downsize(self) -> None:
        """Swap each new node for the cheapest offer of the same pool and location that still holds its contents."""
        by_price = sorted(self.offers, key=lambda p: p.price)
        memo: dict[tuple[str, OfferKey, frozenset[tuple[Shape, int]]], tuple[PoolOffer, int] | None] = {}
        for b in self.bins:
            if b.instance_id or not b.contents:
                continue
            key = (b.offer.pool, b.offer.key, frozenset(b.contents.items()))
            if key not in memo:
                memo[key] = self._smaller(b, by_price)
            swap = memo[key]
            if swap is not None and self._room_for_swap(b.offer, swap[0]):
                if self.budget is not None:
                    self.budget += b.offer.price - swap[0].price
                self.room[b.offer.pool] += 1
                self.room[swap[0].pool] -= 1
                b.offer, b.used = swap

    def _room_for_swap(self, old: PoolOffer, new: PoolOffer) -> bool:
        return old.pool == new.pool or self.room.get(new.pool, 0) > 0

    def _smaller(self, b: Bin, by_price: Sequence[PoolOffer]) -> tuple[PoolOffer, int] | None:
        for po in by_price:
            if po.price >= b.offer.price:
                return None
            if po.pool != b.offer.pool or po.location != b.offer.location:
                continue
            used = 0
            for shape, count in b.contents.items():
                cap = self.cap_for(shape, po)
                if cap <= 0:
                    used = UNITS + 1
                    break
                used += count * -(-UNITS // cap)
            if used <= UNITS:
                return (po, used)
        return None

    def result(self) -> ScalePlan:
        out = ScalePlan(unplaceable=dict(self.unplaceable))
        groups: dict[tuple[str, OfferKey], list[Bin]] = defaultdict(list)
        for b in self.bins:
            if b.instance_id:
                if b.jobs:
                    out.absorbed[b.instance_id] = list(b.jobs)
                continue
            groups[(b.offer.pool, b.offer.key)].append(b)
        for (pool, key), bins in groups.items():
            provider, region, itype, spot = key
            price = bins[0].offer.price
            jobs = tuple(dict.fromkeys(j for b in bins for j in b.jobs))
            out.launches.append(Launch(pool, provider, region, itype, spot, price, len(bins), jobs))
            out.new_cost_micros_per_hour += price * len(bins)
        out.launches.sort(key=lambda launch: (launch.price_micros, launch.pool, launch.instance_type))
        return out
