"""Parsing of human quantities into gpufleet's integer units.

GPU: milli-GPU (1000 = one GPU). Memory: MiB. CPU: millicores. Money: micro-dollars.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MILLI_PER_GPU = 1000

_MEM_UNITS: dict[str, Decimal] = {
    "": Decimal(1) / Decimal(1024 * 1024),  # plain bytes
    "b": Decimal(1) / Decimal(1024 * 1024),
    "k": Decimal(1000) / Decimal(1024 * 1024),
    "kb": Decimal(1000) / Decimal(1024 * 1024),
    "ki": Decimal(1) / Decimal(1024),
    "kib": Decimal(1) / Decimal(1024),
    "m": Decimal(1000 * 1000) / Decimal(1024 * 1024),
    "mb": Decimal(1000 * 1000) / Decimal(1024 * 1024),
    "mi": Decimal(1),
    "mib": Decimal(1),
    "g": Decimal(1000**3) / Decimal(1024 * 1024),
    "gb": Decimal(1000**3) / Decimal(1024 * 1024),
    "gi": Decimal(1024),
    "gib": Decimal(1024),
    "t": Decimal(1000**4) / Decimal(1024 * 1024),
    "tb": Decimal(1000**4) / Decimal(1024 * 1024),
    "ti": Decimal(1024 * 1024),
    "tib": Decimal(1024 * 1024),
}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory_mib(value: str | int | float) -> int:
    """``"20GiB"`` -> 20480, ``"512Mi"`` -> 512, ``"1.5GiB"`` -> 1536; a bare number is bytes.

    Raises ValueError with a message saying what forms are accepted.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 20GiB or 512MiB")
    if isinstance(value, int | float):
        mib = Decimal(str(value)) / Decimal(1024 * 1024)
    else:
        m = _MEM_RE.match(value)
        if not m or m.group(2).lower() not in _MEM_UNITS:
            raise ValueError(f"{value!r} is not a size; write e.g. 20GiB, 512MiB or 1.5TiB")
        mib = Decimal(m.group(1)) * _MEM_UNITS[m.group(2).lower()]
    if mib < 0:
        raise ValueError("a size cannot be negative")
    return int(mib.to_integral_value(rounding="ROUND_CEILING"))


def parse_gpus_milli(value: str | int | float) -> int:
    """GPU request -> milli-GPU: ``0.25`` -> 250, ``4`` -> 4000, ``"500m"`` -> 500.

    A fraction must be 0 < x < 1 (one shared GPU); anything >= 1 must be a whole number of GPUs.
    """
    if isinstance(value, bool):
        raise ValueError("expected a number of GPUs such as 0.5 or 4")
    try:
        if isinstance(value, str) and value.strip().endswith("m"):
            milli = Decimal(value.strip()[:-1])
        else:
            milli = Decimal(str(value)) * MILLI_PER_GPU
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number of GPUs; write e.g. 0.5 or 4") from None
    if milli < 0:
        raise ValueError("cannot be negative")
    if milli != milli.to_integral_value():
        raise ValueError(f"{value!r} is finer than 1/1000 of a GPU")
    result = int(milli)
    if result > MILLI_PER_GPU and result % MILLI_PER_GPU:
        raise ValueError(f"{value!r}: above one GPU, ask for a whole number of GPUs (e.g. 2), not a fraction")
    return result


def parse_cpu_milli(value: str | int | float) -> int:
    """``8`` -> 8000, ``"500m"`` -> 500, ``0.5`` -> 500."""
    if isinstance(value, bool):
        raise ValueError("expected a CPU count such as 8 or 500m")
    try:
        if isinstance(value, str) and value.strip().endswith("m"):
            milli = Decimal(value.strip()[:-1])
        else:
            milli = Decimal(str(value)) * 1000
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a CPU count; write e.g. 8 or 500m") from None
    if milli < 0:
        raise ValueError("cannot be negative")
    return int(milli.to_integral_value(rounding="ROUND_CEILING"))


def parse_price_micros(value: str | int | float) -> int:
    """Dollars -> micro-dollars: ``2.5`` -> 2_500_000, ``"$1.20"`` -> 1_200_000."""
    text = str(value).strip().lstrip("$")
    try:
        micros = Decimal(text) * 1_000_000
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a price in dollars; write e.g. 2.50") from None
    if micros < 0:
        raise ValueError("a price cannot be negative")
    return int(micros.to_integral_value(rounding="ROUND_HALF_UP"))


def format_mib(mib: int) -> str:
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024}GiB"
    if mib >= 1024:
        return f"{mib / 1024:.1f}GiB"
    return f"{mib}MiB"


def format_gpus(milli: int) -> str:
    if milli % MILLI_PER_GPU == 0:
        return str(milli // MILLI_PER_GPU)
    return f"{milli / MILLI_PER_GPU:g}"


def format_micros(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"
