"""Scheduler policy configuration: team quotas, budgets, preemption and sharing knobs.

Quotas are in milli-GPU (1000 = one GPU). ``guaranteed`` is what a team always gets back when it asks
(work of other teams running on it is borrowed and is preempted first); ``limit`` is the most it may hold,
borrowed capacity included. ``per_model`` narrows a quota to GPUs of one model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gpufleet.common.errors import InvalidInputError, Problem


@dataclass(frozen=True, slots=True)
class TeamQuota:
    guaranteed_milli: int = 0
    limit_milli: int = 0  # 0 = no limit
    weight: int = 0  # fair-share weight; 0 = derived from guaranteed_milli (or 1)
    per_model: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # model -> (guaranteed, limit)

    def __post_init__(self) -> None:
        if self.guaranteed_milli < 0 or self.limit_milli < 0:
            raise InvalidInputError(Problem("quota", "guaranteed_milli and limit_milli must be >= 0"))
        if self.limit_milli and self.limit_milli < self.guaranteed_milli:
            raise InvalidInputError(
                Problem("quota.limit_milli", f"{self.limit_milli} is below guaranteed_milli {self.guaranteed_milli}")
            )

    @property
    def share_weight(self) -> int:
        return self.weight or max(1, self.guaranteed_milli)


@dataclass(slots=True)
class SchedulerConfig:
    quotas: dict[str, TeamQuota] = field(default_factory=dict)
    # budget hook: True holds the team's new work (reason says so); teams listed in budget_exhausted_teams too
    budget_exhausted: Callable[[str], bool] | None = None
    budget_exhausted_teams: frozenset[str] = frozenset()
    preemption: bool = True
    fractional_mode: str = "shared"  # "shared" (time-sliced + memory watch) or "mps"
    max_placements_per_cycle: int = 0  # 0 = unlimited
    max_mig_relayouts_per_cycle: int = 8  # more MIG jobs wait for the next cycle
    gang_base_port: int = 29500

    def team_quota(self, team: str) -> TeamQuota | None:
        return self.quotas.get(team)

    def is_budget_exhausted(self, team: str) -> bool:
        if team in self.budget_exhausted_teams:
            return True
        return bool(self.budget_exhausted is not None and self.budget_exhausted(team))
