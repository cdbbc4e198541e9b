"""The scheduler's vocabulary: plugin statuses and the Plan a cycle produces.

A :class:`Plan` is data only: the coordinator stores ``placements`` (``pb.TaskAssignment`` lists ready to
persist), requeues ``preemptions``, writes each ``unplaced`` reason into the job record and sends each
``mig_relayouts`` entry to the node's agent as a ``Command.apply_mig_layout``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gpufleet.proto.v1 import types_pb2 as pb

MAX_SCORE = 1000


class Status(enum.StrEnum):
    SUCCESS = "SUCCESS"  # the plugin is satisfied (candidates remain)
    UNSCHEDULABLE = "UNSCHEDULABLE"  # not now; may fit later (capacity frees up, preemption)
    UNRESOLVABLE = "UNRESOLVABLE"  # never on this cluster as it is (no such model, too big for any node)
    WAIT = "WAIT"  # placement waits on something in flight (MIG re-layout, gang members)
    ERROR = "ERROR"  # the request itself is broken
    SKIP = "SKIP"  # the plugin does not apply to this request


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    reason: str = ""
    plugin: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (Status.SUCCESS, Status.SKIP)


SUCCESS = Result(Status.SUCCESS)
SKIP = Result(Status.SKIP)


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    assignments: list[pb.TaskAssignment]


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: str
    reason: str
    for_job_id: str


@dataclass(frozen=True, slots=True)
class MigRelayout:
    node: str
    gpu_index: int
    profiles: list[str]  # the full new layout: slices in use are kept, free ones may be replaced
    for_job_id: str = ""
    cost: int = 0  # free slices destroyed + 1 for the operation itself
    starts: list[int] = field(default_factory=list)  # placement start of each profile (in-use ones unchanged)


@dataclass(slots=True)
class Plan:
    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    unplaced: dict[str, str] = field(default_factory=dict)
    mig_relayouts: list[MigRelayout] = field(default_factory=list)
    # machine code per unplaced job (UNSCHEDULABLE, UNRESOLVABLE, WAIT, ERROR, DEADLINE, BUDGET, QUOTA)
    codes: dict[str, str] = field(default_factory=dict)

    def placement(self, job_id: str) -> Placement | None:
        for p in self.placements:
            if p.job_id == job_id:
                return p
        return None
