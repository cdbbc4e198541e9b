"""Scale-up planning: cheapest node set, gangs in one region, spot policy and fallback, price ceilings, limits."""

from __future__ import annotations

from gpufleet.coordinator.autoscaler.config import AutoscalerConfig, NodePoolConfig, SpotMode
from gpufleet.coordinator.autoscaler.planner import InFlight, Planner
from gpufleet.proto.v1 import types_pb2 as pb
from tests.unit.coordinator.autoscaler.helpers import D, job, small_catalog


def _config(*pools: NodePoolConfig, **kw: object) -> AutoscalerConfig:
    return AutoscalerConfig(pools=list(pools), **kw)  # type: ignore[arg-type]


def _pool(
    name: str = "gpu", regions: list[str] | None = None, spot: SpotMode = SpotMode.NEVER, **kw: object
) -> NodePoolConfig:
    return NodePoolConfig(name=name, provider="fake", regions=regions or ["a"], spot=spot, **kw)  # type: ignore[arg-type]


def _counts(plan) -> dict[tuple[str, str, bool], int]:  # type: ignore[no-untyped-def]
    return {(launch.instance_type, launch.region, launch.spot): launch.count for launch in plan.launches}


def test_few_small_jobs_get_small_nodes_and_many_get_big_ones() -> None:
    planner = Planner(small_catalog())
    cfg = _config(_pool(instance_types=["l4x1", "l4x4"]))
    three = planner.plan(cfg, [job(f"j{i}") for i in range(3)])
    assert _counts(three) == {("l4x1", "a", False): 3}  # $3.0 < one l4x4 at $3.5
    eight = planner.plan(cfg, [job(f"j{i}") for i in range(8)])
    assert _counts(eight) == {("l4x4", "a", False): 2}  # $7 < 8 x $1
    five = planner.plan(cfg, [job(f"j{i}") for i in range(5)])
    assert _counts(five) == {("l4x4", "a", False): 1, ("l4x1", "a", False): 1}
    assert five.new_cost_micros_per_hour == int(4.5 * D)
    assert not five.unplaceable and not five.scheduler_unplaced  # the real scheduler places all five there


def test_gpu_model_and_size_pick_the_type() -> None:
    planner = Planner(small_catalog())
    plan = planner.plan(_config(_pool()), [job("big", 8, model="H100-80GB"), job("small", 1, model="L4")])
    assert _counts(plan) == {("h100x8", "a", False): 1, ("l4x1", "a", False): 1}


def test_gang_members_all_land_in_one_region() -> None:
    planner = Planner(small_catalog())
    cheap_small = _pool("cheap", ["a"], instance_types=["h100x8"], max_nodes=2)
    roomy = _pool("roomy", ["b"], instance_types=["h100x8"], max_nodes=10)
    plan = planner.plan(_config(cheap_small, roomy), [job("gang", 8, nodes=3)])
    assert _counts(plan) == {("h100x8", "b", False): 3}
    two = planner.plan(_config(cheap_small, roomy), [job("gang2", 8, nodes=2)])
    assert _counts(two) == {("h100x8", "a", False): 2}  # fits in the cheaper region


def test_gang_too_big_for_any_region_is_unplaceable() -> None:
    plan = Planner(small_catalog()).plan(_config(_pool(instance_types=["h100x8"], max_nodes=2)), [job("g", 8, nodes=3)])
    assert not plan.launches and "gang" in plan.unplaceable["g"]


def test_spot_preferred_then_on_demand_when_spot_backs_off() -> None:
    planner = Planner(small_catalog())
    cfg = _config(_pool(spot=SpotMode.PREFER, instance_types=["l4x1"]))
    assert _counts(planner.plan(cfg, [job("j")])) == {("l4x1", "a", True): 1}
    fallback = planner.plan(cfg, [job("j")], backoff=[("fake", "a", "l4x1", True)])
    assert _counts(fallback) == {("l4x1", "a", False): 1}


def test_job_spot_policy_is_respected() -> None:
    planner = Planner(small_catalog())
    prefer = _config(_pool(spot=SpotMode.PREFER, instance_types=["l4x1"]))
    assert _counts(planner.plan(prefer, [job("j", spot=pb.SPOT_POLICY_NEVER)])) == {("l4x1", "a", False): 1}
    only_spot = _config(_pool(spot=SpotMode.ONLY, instance_types=["l4x1"]))
    plan = planner.plan(only_spot, [job("j", spot=pb.SPOT_POLICY_NEVER)])
    assert not plan.launches and "j" in plan.unplaceable


def test_max_price_per_gpu_hour() -> None:
    planner = Planner(small_catalog())
    cfg = _config(_pool(spot=SpotMode.PREFER, instance_types=["l4x1"]))
    # $0.45/GPU-hour: spot ($0.40) qualifies, on-demand ($1.00) does not
    assert _counts(planner.plan(cfg, [job("j", max_price_per_gpu=450_000)])) == {("l4x1", "a", True): 1}
    plan = planner.plan(cfg, [job("j", max_price_per_gpu=100_000)])
    assert not plan.launches and "j" in plan.unplaceable


def test_pool_max_price_and_max_nodes() -> None:
    planner = Planner(small_catalog())
    capped = _config(_pool(instance_types=["l4x1", "l4x4"], max_price_micros_per_hour=2 * D))
    assert _counts(planner.plan(capped, [job(f"j{i}") for i in range(8)])) == {("l4x1", "a", False): 8}
    small = _config(_pool(instance_types=["l4x1"], max_nodes=3))
    plan = planner.plan(small, [job(f"j{i}") for i in range(5)], pool_sizes={"gpu": 1})
    assert plan.node_count == 2 and len(plan.unplaceable) == 3
    assert "max_nodes" in next(iter(plan.unplaceable.values()))


def test_spend_ceiling_limits_new_nodes() -> None:
    cfg = _config(_pool(instance_types=["l4x1"]), max_hourly_spend_micros=5 * D)
    plan = Planner(small_catalog()).plan(cfg, [job(f"j{i}") for i in range(5)], current_spend_micros=3 * D)
    assert plan.node_count == 2


def test_nodes_on_their_way_absorb_pending_jobs() -> None:
    planner = Planner(small_catalog())
    cfg = _config(_pool(instance_types=["l4x1", "l4x4"]))
    booting = [InFlight("i-1", "gpu", "fake", "a", "l4x4", False)]
    plan = planner.plan(cfg, [job(f"j{i}") for i in range(5)], in_flight=booting)
    assert plan.absorbed == {"i-1": ["j0", "j1", "j2", "j3"]}
    assert _counts(plan) == {("l4x1", "a", False): 1}


def test_jobs_no_type_can_hold_are_reported_not_launched_for() -> None:
    plan = Planner(small_catalog()).plan(
        _config(_pool(instance_types=["l4x1"])), [job("huge", 16), job("h", 1, model="H100-80GB")]
    )
    assert not plan.launches and set(plan.unplaceable) == {"huge", "h"}


def test_fractional_jobs_share_nodes() -> None:
    plan = Planner(small_catalog()).plan(
        _config(_pool(instance_types=["l4x1", "l4x4"])), [job(f"f{i}", 0.5) for i in range(4)]
    )
    assert plan.node_count == 2 and plan.new_cost_micros_per_hour == 2 * D  # two halves per L4
    assert not plan.scheduler_unplaced


def test_mig_slices_are_counted_per_gpu() -> None:
    planner = Planner(small_catalog())
    plan = planner.plan(_config(_pool()), [job(f"m{i}", mig_profile="1g.10gb") for i in range(10)])
    assert _counts(plan) == {("h100x8", "a", False): 1}  # 7 slices per H100, 56 per node
    assert not plan.unplaceable and not plan.scheduler_unplaced
    big = planner.plan(_config(_pool()), [job(f"m{i}", mig_profile="7g.80gb") for i in range(9)])
    assert _counts(big) == {("h100x8", "a", False): 2}


def test_fit_answers_stay_right_across_shapes_and_passes() -> None:
    planner = Planner(small_catalog())  # one scheduler instance answers every probe
    cfg = _config(_pool())
    for _ in range(2):
        assert _counts(planner.plan(cfg, [job("s", 1, model="L4")])) == {("l4x1", "a", False): 1}
        assert _counts(planner.plan(cfg, [job("b", 8, model="H100-80GB")])) == {("h100x8", "a", False): 1}
        assert _counts(planner.plan(cfg, [job("f", 0.5, model="L4")])) == {("l4x1", "a", False): 1}
