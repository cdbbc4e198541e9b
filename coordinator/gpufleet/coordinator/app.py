"""``Coordinator``: one replica's components wired together (store, elector, leader runtime, managers, readers).

Servicers hold a ``Coordinator`` and call into it; ``server.py`` runs it behind gRPC. Other leader-only subsystems
(the autoscaler) register with :meth:`Coordinator.add_leader_subsystem`; they are enabled after the coordinator's
own runtime, so the fleet view is loading when they start.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import NotLeaderError
from gpufleet.coordinator.config import CoordinatorSettings, scheduler_config
from gpufleet.coordinator.leadership import LeaderElector, LeaderOnly
from gpufleet.coordinator.scheduler import Scheduler
from gpufleet.coordinator.state.costs import CostAccountant
from gpufleet.coordinator.state.fleet import FleetView
from gpufleet.coordinator.state.jobs import JobManager, JobReader
from gpufleet.coordinator.state.leader import LeaderRuntime
from gpufleet.coordinator.state.liveness import LivenessChecker
from gpufleet.coordinator.state.nodes import NodeManager, NodeReader
from gpufleet.coordinator.state.reconcile import AgentReconciler
from gpufleet.coordinator.state.retention import JobRetention
from gpufleet.coordinator.state.scheduling import SchedulingLoop
from gpufleet.coordinator.state.sessions import AgentSessions
from gpufleet.coordinator.state.stopping import StopTracker
from gpufleet.coordinator.store.base import ClusterStore
from gpufleet.proto.v1 import agent_pb2 as apb
from gpufleet.proto.v1 import cluster_pb2 as cpb

log = logging.getLogger(__name__)

#: how long past the SIGTERM grace a preempted job waits for its agent to confirm the stop before it is re-placed
STOP_CONFIRM_SLACK_S = 30.0


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        store: ClusterStore,
        *,
        identity: str,
        address: str,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.identity = identity
        self.address = address
        self.clock = clock or SystemClock()
        self.elector = LeaderElector(
            store, identity=identity, address=address, ttl_s=settings.leadership.ttl_s, clock=self.clock
        )
        self.view = FleetView(store, self.elector)
        self.sessions = AgentSessions(self.view, settings.agents, self.clock)
        self.costs = CostAccountant(store, settings.cost, self.clock)
        self.scheduler = Scheduler(config=scheduler_config(settings.scheduler, self.costs.budget_exhausted))
        self.stops = StopTracker(self.clock, settings.agents.grace_period_s + STOP_CONFIRM_SLACK_S)
        self.scheduling = SchedulingLoop(
            self.view, self.scheduler, self.sessions, settings.scheduling, self.clock, self.stops
        )
        self.stops.on_release = self.scheduling.release
        self.liveness = LivenessChecker(self.view, self.sessions, settings.liveness, self.clock, self.stops)
        self.view.listeners.extend([self.scheduling, self.sessions])
        self.jobs = JobManager(self.view, self.clock)
        self.nodes = NodeManager(self.view, self.clock, settings.drain.default_deadline_s, self.stops)
        self.reconciler = AgentReconciler(self.view, self.sessions, self.clock, self.stops)
        self.job_reader = JobReader(store)
        self.node_reader = NodeReader(store)
        self.runtime = LeaderRuntime(
            self.view,
            self.sessions,
            self.scheduling,
            self.liveness,
            self.costs,
            settings.cost.budget_refresh_s,
            resign=self.elector.resign,
            retention=JobRetention(self.view, self.costs, settings.jobs, self.clock, settings.scheduling.txn_chunk),
        )
        self.elector.add_subsystem(self.runtime)
        #: ClusterService.ListInstances answers with this (the autoscaler sets it)
        self.instances: Callable[[], Sequence[cpb.CloudInstance]] | None = None
        #: called with (node, event) for every SpotInterruption an agent reports, after the node starts draining
        self.interruption_handlers: list[Callable[[str, apb.SpotInterruption], Awaitable[object]]] = []

    def add_leader_subsystem(self, subsystem: LeaderOnly) -> None:
        """Run ``subsystem`` only while this replica leads (e.g. the autoscaler)."""
        self.elector.add_subsystem(subsystem)

    @property
    def is_leader(self) -> bool:
        return bool(self.elector.is_leader)

    def leader_address(self) -> str:
        info = self.elector.leader
        return info.address if info is not None else ""

    async def require_leader(self) -> None:
        """Raise NotLeaderError (with the leader's address) unless this replica leads and has loaded its view."""
        if not self.elector.is_leader:
            raise NotLeaderError(self.leader_address())
        await self.runtime.wait_ready()
        if not self.elector.is_leader:
            raise NotLeaderError(self.leader_address())
