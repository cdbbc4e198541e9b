"""The plugin profiles ("policies") the scheduler and ``gpufleet sim --policy`` offer.

Order matters:
* pre-filters run once per job before any node is looked at: Budget and Deadline first (they hold a job
  regardless of capacity, and their reason is the one a user must act on), then the team Quota limit.
* filters go from cheapest and most selective to most specific: NodeHealth, PlacementConstraints,
  NodeResources, then the GPU filters (GpuFit for fractions/whole GPUs, Mig for slices), and the per-model
  Quota last so it only counts nodes that could otherwise take the job.
* scores (absolute integers, so per-node results can be cached within a cycle): Fragmentation (minus the
  milli-GPU of expected stranded capacity a placement adds, FGD) dominates; Price (0..1000 from $10 per
  GPU-hour down to free, weight 32: $1/GPU-hour weighs like 100 milli-GPU of fragmentation; silent when all
  nodes cost the same) fills owned and cheap nodes first; BinPack (0..1000) breaks ties towards fuller
  nodes/GPUs; Spread only speaks for jobs that ask to be spread.
* permit: Gang (all members reserved or none).
"""

from __future__ import annotations

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.scheduler.framework import Profile
from gpufleet.coordinator.scheduler.plugins.binpack import BinPack
from gpufleet.coordinator.scheduler.plugins.budget import Budget
from gpufleet.coordinator.scheduler.plugins.constraints import PlacementConstraints
from gpufleet.coordinator.scheduler.plugins.deadline import Deadline
from gpufleet.coordinator.scheduler.plugins.fragmentation import Fragmentation
from gpufleet.coordinator.scheduler.plugins.gang import Gang
from gpufleet.coordinator.scheduler.plugins.gpu_fit import GpuFit
from gpufleet.coordinator.scheduler.plugins.health import NodeHealth
from gpufleet.coordinator.scheduler.plugins.mig import Mig
from gpufleet.coordinator.scheduler.plugins.price import Price
from gpufleet.coordinator.scheduler.plugins.quota import Quota
from gpufleet.coordinator.scheduler.plugins.resources import NodeResources
from gpufleet.coordinator.scheduler.plugins.spread import Spread

_PRE = (Budget(), Deadline(), Quota())
_FILTERS = (NodeHealth(), PlacementConstraints(), NodeResources(), GpuFit(), Mig(), Quota())

DEFAULT_PROFILE = Profile(
    name="default",
    pre_filter=_PRE,
    filter=_FILTERS,
    score=((Fragmentation(), 32), (Price(), 32), (BinPack(), 1), (Spread(), 64)),
    permit=(Gang(),),
)
BINPACK_PROFILE = Profile("binpack", _PRE, _FILTERS, ((BinPack(), 1), (Spread(), 1)), (Gang(),))
SPREAD_PROFILE = Profile("spread", _PRE, _FILTERS, ((Spread(always=True), 1),), (Gang(),))

PROFILES: dict[str, Profile] = {p.name: p for p in (DEFAULT_PROFILE, BINPACK_PROFILE, SPREAD_PROFILE)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidInputError(
            Problem("policy", f"unknown policy {name!r}; choose one of {', '.join(PROFILES)}")
        ) from None
