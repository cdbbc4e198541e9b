"""Fixtures of the integration tests: real coordinator and agent processes on loopback (``fleet_factory``,
tests/helpers/fleet.py) and an etcd of one test's own (``fresh_etcd_server``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.etcd_server import fresh_etcd_server
from tests.helpers.fleet import Fleet

__all__ = ["fleet_factory", "fresh_etcd_server"]


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Start fleets (etcd, coordinators, agents) for one test; every process is stopped when it ends."""
    fleets: list[Fleet] = []

    def make(**kw: Any) -> Fleet:
        f = Fleet(tmp_path / f"fleet{len(fleets)}", **kw)
        fleets.append(f)
        return f

    try:
        yield make
    finally:
        for f in fleets:
            f.stop_all()
