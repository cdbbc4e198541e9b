"""Planning a MIG re-layout around instances that must stay where they are.

Both backends use this: the target layout is checked against the model's profile table first
(:func:`gpufleet.common.gpu_models.plan_layout`, for clear errors), then placed around the instances that
are kept (in use, or reused so their UUIDs stay the same) with the same search (``search_placement``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.gpu_models import GpuModel, PlacedInstance, plan_layout, search_placement


def place_around(model: GpuModel, fixed: Sequence[PlacedInstance], profiles: Sequence[str]) -> list[PlacedInstance]:
    """Place ``profiles`` (new instances) next to ``fixed`` ones; returns only the new placements.

    Raises InvalidInputError when no placement exists that leaves ``fixed`` untouched.
    """
    result = search_placement([model.profile(n) for n in profiles], fixed)
    if result is None:
        kept = ", ".join(f"{p.profile.name}@{p.start}" for p in fixed)
        raise InvalidInputError(
            Problem(
                "profiles",
                f"cannot place {', '.join(profiles)} on a {model.name} without moving the kept slices ({kept}); "
                "stop the jobs on those slices or choose a layout that keeps them",
            )
        )
    return sorted(result, key=lambda p: p.start)


def plan_relayout(
    model: GpuModel,
    current: Sequence[PlacedInstance],
    must_keep: Sequence[PlacedInstance],
    profiles: Sequence[str],
) -> tuple[list[PlacedInstance], list[PlacedInstance]]:
    """Decide which current instances to keep and which new ones to create for the target ``profiles``.

    ``must_keep`` instances (in use) stay or the call fails; other current instances are kept too when the
    layout still fits around them (their MIG UUIDs then survive). Returns ``(keep, create)``; everything in
    ``current`` not in ``keep`` is to be destroyed.
    """
    plan_layout(model, profiles)  # validates profile names, counts, compute/memory slices, placement rules
    want = Counter(profiles)
    have_kept = Counter(p.profile.name for p in must_keep)
    for name, n in have_kept.items():
        if want[name] < n:
            raise InvalidInputError(
                Problem("profiles", f"the layout drops a {name} slice that is in use; keep {n} x {name} in it")
            )
    # try to keep as many other current instances as possible, greedily in order of start
    keep = list(must_keep)
    remaining = want - Counter(p.profile.name for p in keep)
    for inst in sorted(current, key=lambda p: p.start):
        if inst in keep or remaining[inst.profile.name] <= 0:
            continue
        trial = [*keep, inst]
        rest = list((remaining - Counter([inst.profile.name])).elements())
        try:
            place_around(model, trial, rest)
        except InvalidInputError:
            continue
        keep = trial
        remaining = remaining - Counter([inst.profile.name])
    create = place_around(model, keep, list(remaining.elements()))
    return keep, create
