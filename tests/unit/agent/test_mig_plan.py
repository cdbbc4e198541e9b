"""Property tests of MIG re-layout planning (backends/mig_plan.py) on every MIG-capable catalog model."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.agent.backends.mig_plan import plan_relayout
from gpufleet.common.errors import InvalidInputError
from gpufleet.common.gpu_models import MIG_COMPUTE_SLICES, MODELS, PlacedInstance, plan_layout

MIG_MODELS = [m for m in MODELS.values() if m.mig_capable]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[object, list[PlacedInstance], list[PlacedInstance], list[str]]:
    model = draw(st.sampled_from(MIG_MODELS))
    names = [p.name for p in model.mig_profiles]

    def layout() -> list[str]:
        return draw(st.lists(st.sampled_from(names), max_size=7))

    current: list[PlacedInstance] = []
    for _ in range(5):  # find a valid current layout
        try:
            current = plan_layout(model, layout())
            break
        except InvalidInputError:
            continue
    keep = draw(st.lists(st.sampled_from(current), unique=True)) if current else []
    return model, current, keep, layout()


def valid(placed: list[PlacedInstance]) -> bool:
    slices = [s for p in placed for s in p.slices]
    counts = Counter(p.profile.name for p in placed)
    return (
        len(slices) == len(set(slices))
        and all(0 <= s < 8 for s in slices)
        and sum(p.profile.compute_slices for p in placed) <= MIG_COMPUTE_SLICES
        and all(p.start in p.profile.placements for p in placed)
        and all(n <= p.profile.max_instances for p in placed for name, n in counts.items() if name == p.profile.name)
    )


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_relayout_is_valid_keeps_what_must_stay_and_matches_the_target(case: tuple) -> None:  # type: ignore[type-arg]
    model, current, must_keep, target = case
    try:
        keep, create = plan_relayout(model, current, must_keep, target)  # type: ignore[arg-type]
    except InvalidInputError:
        # refused: either the target is impossible on this model, or it cannot be placed around must_keep
        try:
            plan_layout(model, target)  # type: ignore[arg-type]
        except InvalidInputError:
            return
        assert must_keep, "a layout that exists on an empty GPU must be planned when nothing must stay"
        return
    result = keep + create
    assert valid(result)
    assert Counter(p.profile.name for p in result) == Counter(target)
    assert all(k in keep for k in must_keep)
    assert all(k in current for k in keep)
