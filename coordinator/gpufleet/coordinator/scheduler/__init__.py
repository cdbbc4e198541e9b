"""The gpufleet scheduler: incremental ClusterState, a plugin pipeline, and a pure ``schedule`` producing a Plan.

See docs/architecture/scheduler.md. Public API::

    state = ClusterState(); state.upsert_node(node); state.bind(job); state.unbind(job_id)
    plan = Scheduler(profile=None, config=SchedulerConfig(...)).schedule(state, pending, now_ms, running)
"""

from gpufleet.coordinator.scheduler.config import SchedulerConfig, TeamQuota
from gpufleet.coordinator.scheduler.framework import Profile
from gpufleet.coordinator.scheduler.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from gpufleet.coordinator.scheduler.scheduler import Scheduler
from gpufleet.coordinator.scheduler.state import ClusterState
from gpufleet.coordinator.scheduler.types import MigRelayout, Placement, Plan, Preemption, Status

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "ClusterState",
    "MigRelayout",
    "Placement",
    "Plan",
    "Preemption",
    "Profile",
    "Scheduler",
    "SchedulerConfig",
    "Status",
    "TeamQuota",
    "get_profile",
]
