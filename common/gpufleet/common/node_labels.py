"""Node labels gpufleet itself reads or writes, and the price label's parser (one definition for all users).

``gpufleet.io/price-per-gpu-hour-micros`` is what one GPU-hour on the node costs, in micro-dollars: the agent's
``[labels]`` set it on owned hardware, the autoscaler sets it on the machines it launches (the catalog price of
the offer it took, per GPU), cost reports charge it and the scheduler honours job price ceilings with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

PRICE = "gpufleet.io/price-per-gpu-hour-micros"
POOL = "gpufleet.io/pool"
# older or shorter spellings still read (micro-dollars, then dollars)
_PRICE_MICROS_ALIASES = ("gpufleet.io/price-micros-per-gpu-hour", "price_micros")
_PRICE_DOLLAR_ALIASES = ("gpufleet.io/price", "price")


def price_micros(labels: Mapping[str, str]) -> int | None:
    """The node's price per GPU-hour in micro-dollars from its labels; None when no price label is set, -1 when
    one is set but is not a non-negative number."""
    for key in (PRICE, *_PRICE_MICROS_ALIASES):
        if key in labels:
            try:
                value = int(labels[key])
            except ValueError:
                return -1
            return value if value >= 0 else -1
    for key in _PRICE_DOLLAR_ALIASES:
        if key in labels:
            try:
                dollars = Decimal(labels[key])
            except InvalidOperation:
                return -1
            return int(dollars * 1_000_000) if dollars >= 0 else -1
    return None
