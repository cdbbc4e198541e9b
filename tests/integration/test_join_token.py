"""With ``[agents] join_token`` set, only agents that present the token become nodes; a refused agent is told why
(PERMISSION_DENIED naming the setting to fix)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gpufleet.proto.v1 import nodes_pb2 as npb
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.timeout(90)


def test_only_agents_with_the_join_token_become_nodes(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(extra_env={"GPUFLEET_COORDINATOR__AGENTS__JOIN_TOKEN": "s3cret"})
    fleet.start_coordinator("c1")
    fleet.start_agent("good", gpus="L4:1", extra=["--join-token", "s3cret"])
    bad = fleet.start_agent("bad", gpus="L4:1", extra=["--join-token", "guess"])
    fleet.start_agent("none", gpus="L4:1")
    fleet.wait_nodes(1)
    time.sleep(2)  # the others have tried by now
    names = {n.inventory.name for n in fleet.api().nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes}
    assert names == {"good"}
    deadline = time.monotonic() + 10
    while "PERMISSION_DENIED" not in bad.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "join token does not match" in bad.output()
