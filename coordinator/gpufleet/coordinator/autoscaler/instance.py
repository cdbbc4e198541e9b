"""The lifecycle of one autoscaled instance: states, the transition table (a comment on each edge), history.

    REQUESTED ──launch ok──▶ BOOTING ──agent registered──▶ REGISTERED ──scale-down / interruption──▶ DRAINING
        │                      │  (boot timeout, not needed,        │                                  │
        │ launch error         │   interrupted)                     │ (node lost)                      │ drained
        ▼                      ▼                                    ▼                                  ▼
      FAILED               TERMINATING ◀────────────────────────────┴──────────────────────────── TERMINATING
                               │ cloud confirms
                               ▼
                           TERMINATED

An illegal edge raises IllegalTransitionError; it is never ignored. Each ``Instance`` is one launch of one
machine; its id is also the launch token, so retrying the launch of the same record never buys two machines.
Records persist as ``pb.CloudInstance`` (cluster.proto) under ``/gpufleet/instances/<id>``; the history is kept
in memory only (the proto has no field for it).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpufleet.common.errors import IllegalTransitionError
from gpufleet.proto.v1 import cluster_pb2 as cpb


class InstanceStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    BOOTING = "BOOTING"
    REGISTERED = "REGISTERED"
    FAILED = "FAILED"
    DRAINING = "DRAINING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


S = InstanceStatus

TRANSITIONS: Mapping[InstanceStatus, frozenset[InstanceStatus]] = {
    # decided and recorded, the cloud call is (about to be) made with the record id as idempotency token
    S.REQUESTED: frozenset(
        {
            S.BOOTING,  # the cloud accepted the launch and named the machine
            S.FAILED,  # capacity / quota / invalid request / never confirmed: try another option
            S.TERMINATING,  # no longer wanted before the cloud confirmed (a leader change found it stale)
        }
    ),
    # the machine exists; its agent has not registered yet
    S.BOOTING: frozenset(
        {
            S.REGISTERED,  # an agent with this node name (or instance id) registered
            S.TERMINATING,  # boot timeout, no longer needed, or a spot interruption before it joined
            S.TERMINATED,  # the cloud says it is gone (spot reclaimed, deleted outside gpufleet)
        }
    ),
    # a fleet node
    S.REGISTERED: frozenset(
        {
            S.DRAINING,  # chosen for scale-down, or its cloud announced an interruption
            S.TERMINATING,  # its node was lost for good (agent gone and not coming back)
            S.TERMINATED,  # the cloud says it is gone
        }
    ),
    # cordoned; jobs are being moved off
    S.DRAINING: frozenset(
        {
            S.TERMINATING,  # drained (or the drain deadline passed)
            S.REGISTERED,  # drain cancelled: demand came back before it finished
            S.TERMINATED,  # the cloud took it first (spot)
        }
    ),
    # the terminate call is made (idempotent); waiting for the cloud to confirm
    S.TERMINATING: frozenset({S.TERMINATED}),
    # terminal
    S.FAILED: frozenset(),
    S.TERMINATED: frozenset(),
}

ACTIVE: frozenset[InstanceStatus] = frozenset({S.REQUESTED, S.BOOTING, S.REGISTERED, S.DRAINING, S.TERMINATING})
TERMINAL: frozenset[InstanceStatus] = frozenset({S.FAILED, S.TERMINATED})
#: states that count against a pool's max_nodes and as fleet spend
COUNTED: frozenset[InstanceStatus] = frozenset({S.REQUESTED, S.BOOTING, S.REGISTERED, S.DRAINING})


def can_reach(src: InstanceStatus, dst: InstanceStatus) -> bool:
    """Whether ``dst`` is reachable from ``src`` through any path of the table (reachability predicate)."""
    seen, todo = {src}, [src]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt == dst:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


@dataclass(frozen=True, slots=True)
class StatusChange:
    src: InstanceStatus
    dst: InstanceStatus
    at_ms: int
    reason: str


@dataclass(slots=True)
class Instance:
    id: str
    pool: str
    provider: str
    region: str
    instance_type: str
    spot: bool
    price_micros: int
    status: InstanceStatus = S.REQUESTED
    zone: str = ""
    cloud_id: str = ""
    node: str = ""  # the agent's node name (given to the agent by bootstrap)
    created_ms: int = 0
    status_ms: int = 0  # when the current status was entered
    reason: str = ""
    history: list[StatusChange] = field(default_factory=list)
    interruption_deadline_ms: int = 0  # set when the cloud announced it will reclaim the machine
    replaced: bool = False  # a replacement was requested for it (spot interruption)

    def to(self, dst: InstanceStatus, *, at_ms: int, reason: str) -> None:
        """Move to ``dst``, recording the edge. Raises IllegalTransitionError on an edge not in TRANSITIONS."""
        if dst not in TRANSITIONS[self.status]:
            raise IllegalTransitionError(f"instance {self.id}: {self.status} -> {dst} is not allowed ({reason})")
        self.history.append(StatusChange(self.status, dst, at_ms, reason))
        self.status = dst
        self.status_ms = at_ms
        self.reason = reason

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_proto(self) -> cpb.CloudInstance:
        return cpb.CloudInstance(
            id=self.id,
            provider=self.provider,
            region=self.region,
            zone=self.zone,
            instance_type=self.instance_type,
            spot=self.spot,
            state=str(self.status),
            cloud_id=self.cloud_id,
            node=self.node,
            pool=self.pool,
            price_micros_per_hour=self.price_micros,
            launched_ms=self.created_ms,
            reason=self.reason,
            state_since_ms=self.status_ms,
            interruption_deadline_ms=self.interruption_deadline_ms,
            replacement_requested=self.replaced,
            history=[
                cpb.InstanceTransition(from_state=str(h.src), to_state=str(h.dst), at_ms=h.at_ms, reason=h.reason)
                for h in self.history
            ],
        )

    @classmethod
    def from_proto(cls, m: cpb.CloudInstance, *, now_ms: int = 0) -> Instance:
        return cls(
            id=m.id,
            pool=m.pool,
            provider=m.provider,
            region=m.region,
            instance_type=m.instance_type,
            spot=m.spot,
            price_micros=m.price_micros_per_hour,
            status=InstanceStatus(m.state or "REQUESTED"),
            zone=m.zone,
            cloud_id=m.cloud_id,
            node=m.node,
            created_ms=m.launched_ms,
            # records written before state_since_ms existed: timeouts restart from the load
            status_ms=m.state_since_ms or now_ms or m.launched_ms,
            reason=m.reason,
            history=[
                StatusChange(InstanceStatus(h.from_state), InstanceStatus(h.to_state), h.at_ms, h.reason)
                for h in m.history
            ],
            interruption_deadline_ms=m.interruption_deadline_ms,
            replaced=m.replacement_requested,
        )


def new_instance_id(pool: str) -> str:
    """``<pool>-<12 hex>``: also the agent's node name and the launch idempotency token."""
    return f"{pool}-{uuid.uuid4().hex[:12]}"
