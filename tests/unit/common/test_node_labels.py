"""The node price label: one spelling documented, older ones still read, bad values flagged."""

from __future__ import annotations

from gpufleet.common import node_labels


def test_price_label_spellings_and_bad_values() -> None:
    assert node_labels.price_micros({node_labels.PRICE: "2500000"}) == 2_500_000
    assert node_labels.price_micros({"gpufleet.io/price-micros-per-gpu-hour": "7"}) == 7  # older spelling
    assert node_labels.price_micros({"gpufleet.io/price": "1.25"}) == 1_250_000  # dollars
    assert node_labels.price_micros({"rack": "r1"}) is None  # no price: owned hardware
    assert node_labels.price_micros({node_labels.PRICE: "2.5"}) == -1  # micro-dollars must be an integer
    assert node_labels.price_micros({node_labels.PRICE: "-3"}) == -1
    assert node_labels.price_micros({"price": "cheap"}) == -1
