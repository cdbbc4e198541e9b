import pytest

from gpufleet.common.errors import InvalidInputError
from gpufleet.common.gpu_models import MODELS, find_start, get_model, model_for_product_name, plan_layout


def test_h100_full_mixed_layout() -> None:
    placed = plan_layout("H100-80GB", ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    assert sorted(p.profile.name for p in placed) == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    slices = [s for p in placed for s in p.slices]
    assert len(slices) == len(set(slices))


@pytest.mark.parametrize(
    ("model", "layout", "why"),
    [
        ("A100-40GB", ["4g.20gb", "4g.20gb"], "compute slices"),
        ("H100-80GB", ["3g.40gb", "3g.40gb", "1g.10gb"], "memory slices"),
        ("H100-80GB", ["1g.10gb"] * 8, "compute slices"),
        ("A100-80GB", ["3g.20gb"], "no MIG profile"),
        ("L4", ["1g.10gb"], "not MIG-capable"),
    ],
)
def test_invalid_layouts_say_why(model: str, layout: list[str], why: str) -> None:
    with pytest.raises(InvalidInputError, match=why):
        plan_layout(model, layout)


def test_seven_1g_fit_but_placement_rules_hold() -> None:
    assert len(plan_layout("A100-80GB", ["1g.10gb"] * 7)) == 7
    h100 = get_model("H100-80GB")
    four_g = plan_layout(h100, ["4g.40gb"])
    assert find_start(h100, four_g, "3g.40gb") == 4
    assert find_start(h100, four_g, "4g.40gb") is None


def test_product_names_map_to_catalog() -> None:
    assert model_for_product_name("NVIDIA H100 80GB HBM3") == "H100-80GB"
    assert model_for_product_name("Tesla T4") == "T4"
    assert all(m.memory_mib > 0 for m in MODELS.values())
