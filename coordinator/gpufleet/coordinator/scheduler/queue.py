"""Queue order: priority, then earliest deadline, then weighted fair share among teams, then arrival.

Fair share is computed up front for the whole cycle: a team's k-th pending job (in its own deadline/arrival
order) is keyed by (what the team holds + the demand of its k-1 earlier jobs) / its weight, so teams
interleave by weighted usage (as dominant-share schedulers do) instead of one team's burst going first.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.plugins.quota import request_milli
from gpufleet.coordinator.scheduler.request import NO_DEADLINE, Request
from gpufleet.coordinator.scheduler.state import ClusterState

_own_key = operator.attrgetter("own_key")


def order(reqs: Sequence[Request], state: ClusterState, config: SchedulerConfig) -> list[Request]:
    groups: dict[tuple[int, str], list[Request]] = {}
    for r in reqs:
        groups.setdefault((r.priority, r.team), []).append(r)
    if len(groups) == 1:
        # one team at one priority: the fair-share key grows along the team's own order, so that order is
        # the queue order
        return sorted(reqs, key=_own_key)
    share: dict[str, float] = {}
    for (_, team), rs in groups.items():
        q = config.team_quota(team)
        weight = q.share_weight if q is not None else 1000
        used = state.team_milli.get(team, 0)
        for r in sorted(rs, key=_own_key):
            share[r.job_id] = used / weight
            used += max(1, request_milli(r))
    return sorted(
        reqs,
        key=lambda r: (-r.priority, r.deadline_ms or NO_DEADLINE, share[r.job_id], r.created_ms, r.job_id),
    )
