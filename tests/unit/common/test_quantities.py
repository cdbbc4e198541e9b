import pytest

from gpufleet.common.quantities import parse_cpu_milli, parse_gpus_milli, parse_memory_mib, parse_price_micros


@pytest.mark.parametrize(
    ("text", "mib"),
    [("20GiB", 20480), ("512Mi", 512), ("1.5GiB", 1536), ("80GB", 76294), ("1TiB", 1048576), (1048576, 1)],
)
def test_memory(text: str | int, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize("bad", ["20 parsecs", "GiB", "-1GiB", ""])
def test_memory_rejects_with_hint(bad: str) -> None:
    with pytest.raises(ValueError, match="GiB"):
        parse_memory_mib(bad)


@pytest.mark.parametrize(("value", "milli"), [(0.25, 250), (0.5, 500), (1, 1000), (4, 4000), ("500m", 500)])
def test_gpus(value: float | str, milli: int) -> None:
    assert parse_gpus_milli(value) == milli


def test_gpus_above_one_must_be_whole() -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_gpus_milli(1.5)


def test_cpu_and_price() -> None:
    assert parse_cpu_milli(8) == 8000
    assert parse_cpu_milli("250m") == 250
    assert parse_price_micros("$2.50") == 2_500_000
