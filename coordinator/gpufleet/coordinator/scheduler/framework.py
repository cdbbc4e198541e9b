"""The plugin framework: :class:`Profile` (ordered plugin lists), :class:`CycleState`, :class:`Candidates`.

Plugins work on vectors, never one node at a time: a filter narrows the boolean masks in
:class:`Candidates` (nodes ``(n,)`` and GPUs ``(n, G)``) and returns a :class:`Result`; a score plugin gets
the surviving options (a node, or a node and GPU column for single-GPU requests) as index arrays and returns
one integer per option in ``0..MAX_SCORE``. Order matters and is stated next to each list in
:data:`DEFAULT_PROFILE` (see ``scheduler/profiles.py``).

Each filter and score plugin also answers for one node slot with plain Python values (``filter_one``,
``score_one``): after a placement the shape cache re-evaluates the one or two nodes it changed, where the
fixed cost of some fifty small numpy calls would dominate. Both forms compute the same integers (scores are
integer-exact), which ``tests/unit/coordinator/scheduler/test_state_fastpaths.py`` checks plugin by plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from gpufleet.coordinator.scheduler.config import SchedulerConfig
from gpufleet.coordinator.scheduler.mix import MixClasses
from gpufleet.coordinator.scheduler.request import Request
from gpufleet.coordinator.scheduler.state import ClusterState
from gpufleet.coordinator.scheduler.types import MAX_SCORE, Result

B = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class CycleState:
    """What one ``schedule`` call shares between plugins."""

    state: ClusterState
    config: SchedulerConfig
    now_ms: int
    mix: MixClasses
    notes: dict[str, object] = field(default_factory=dict)
    # per-cycle memo of masks that only node upserts change (never during a cycle), keyed by the plugin
    memo: dict[tuple[object, ...], B] = field(default_factory=dict)
    # the nodes were already checked for readiness and free CPU/memory (``shape_cache.may_fit``), so
    # NodeHealth and NodeResources have nothing left to remove
    prechecked: bool = False


@dataclass(slots=True)
class Candidates:
    node: B  # (n,) nodes still possible
    gpu: B | None = None  # (n, G) GPUs still possible (None: the request needs no GPU)
    need_mib: I64 | None = None  # (n, G) GPU memory the request needs on each GPU
    eliminated: list[tuple[str, int]] = field(default_factory=list)  # (why, how many nodes) per filter
    near_miss: str = ""  # e.g. "the best node has 1 free"
    count: int = -1  # nodes still possible (kept by narrow; -1: count them)

    def __post_init__(self) -> None:
        if self.count < 0:
            self.count = int(np.count_nonzero(self.node))

    def narrow(self, keep: B | np.bool_, why: str) -> int:
        """Drop nodes not in ``keep``; remember how many were dropped and why. Returns how many remain."""
        np.logical_and(self.node, keep, out=self.node)
        after = int(np.count_nonzero(self.node))
        if self.count > after:
            self.eliminated.append((why, self.count - after))
        self.count = after
        return after


@dataclass(frozen=True, slots=True)
class Options:
    """Placement options to score: node slots, and a GPU column each (-1: the GPUs are picked afterwards)."""

    node: I64
    col: I64

    def __len__(self) -> int:
        return len(self.node)


class PreFilterPlugin(Protocol):
    name: ClassVar[str]

    def enabled(self, config: SchedulerConfig) -> bool:
        """False when the configuration gives the plugin nothing to check (it is then left out of the cycle)."""
        ...

    def pre_filter(self, cycle: CycleState, req: Request) -> Result: ...


# what ``FilterPlugin.filter_one`` answers: the node is out (False), in (True), or in with these GPU columns
NodeFit = bool | list[int]


class FilterPlugin(Protocol):
    name: ClassVar[str]

    def filter(self, cycle: CycleState, req: Request, cand: Candidates) -> Result: ...

    def filter_one(self, cycle: CycleState, req: Request, i: int) -> NodeFit:
        """``filter`` for node slot ``i`` alone: False when it would drop the node; a GPU filter returns the
        columns it would leave in ``Candidates.gpu`` (never empty)."""
        ...


class ScorePlugin(Protocol):
    name: ClassVar[str]

    def score(self, cycle: CycleState, req: Request, opts: Options) -> I64 | None:
        """One integer per option, or None when the plugin has no opinion on this request (all options equal)."""
        ...

    def score_one(self, cycle: CycleState, req: Request, i: int, cols: list[int]) -> list[int] | int | None:
        """``score`` for the options of node slot ``i`` (GPU columns, or ``[-1]`` for a node-level option): one
        integer per option, one for all of them, or None (no opinion)."""
        ...


class PermitPlugin(Protocol):
    name: ClassVar[str]

    def permit(self, cycle: CycleState, req: Request, reserved_members: int) -> Result: ...


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    pre_filter: tuple[PreFilterPlugin, ...]
    filter: tuple[FilterPlugin, ...]
    score: tuple[tuple[ScorePlugin, int], ...]
    permit: tuple[PermitPlugin, ...] = ()
    # every score depends on the scored node alone (absolute, not scaled across nodes and not by position),
    # so the scheduler may cache per-node results (shape_cache.py); False turns the cache off
    node_local_scores: bool = True


def sorted_runs(a: I64) -> tuple[I64, I64, B]:
    """For a sorted array: (its distinct values, the index of each one's first occurrence, the run-start
    flags), the values ``np.unique(a, return_index=True)`` gives, without its sort (options come sorted by
    node). ``np.cumsum(flags) - 1`` is the inverse."""
    flags = np.empty(len(a), dtype=np.bool_)
    flags[:1] = True
    np.not_equal(a[1:], a[:-1], out=flags[1:])
    first = np.flatnonzero(flags)
    return a[first], first, flags


def normalize(raw: npt.NDArray[np.float64] | I64, higher_is_better: bool = True) -> I64:
    """Min-max scale to integers 0..MAX_SCORE (all equal -> all MAX_SCORE)."""
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(raw.min()), float(raw.max())
    if hi - lo < 1e-12:
        return np.full(raw.shape, MAX_SCORE, dtype=np.int64)
    scaled = (raw - lo) / (hi - lo)
    if not higher_is_better:
        scaled = 1.0 - scaled
    return np.rint(scaled * MAX_SCORE).astype(np.int64)
