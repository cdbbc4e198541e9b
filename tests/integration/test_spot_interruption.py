"""A spot interruption notice travels the real chain: the agent's AWS IMDSv2 watcher (pointed at a loopback fake
metadata service by its config file) sees it, sends SpotInterruption on its stream, and the coordinator drains the
node at once: cordoned, its preemptible job requeued and placed on another node."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpufleet.common import lifecycle as lc
from gpufleet.proto.v1 import nodes_pb2 as npb
from gpufleet.proto.v1 import types_pb2 as pb
from tests.fakes.metadata import FakeMetadata
from tests.helpers.fleet import Fleet, job_spec

pytestmark = pytest.mark.timeout(90)


def test_spot_notice_drains_the_node_and_the_job_moves(fleet_factory: Callable[..., Fleet], tmp_path: Path) -> None:
    meta = FakeMetadata().start()
    try:
        config = tmp_path / "spot-agent.toml"
        config.write_text(f'[interruptions]\nprovider = "aws"\naws_endpoint = "{meta.url}"\npoll_interval_s = 0.2\n')
        fleet = fleet_factory()
        fleet.start_coordinator("c1")
        fleet.start_agent("spot-1", gpus="L4:1", extra=["--config", str(config), "--spot"])
        fleet.wait_nodes(1)
        fleet.start_agent("ondemand-1", gpus="L4:1")
        fleet.wait_nodes(2)
        api = fleet.api()
        api.nodes.CordonNode(npb.CordonNodeRequest(name="ondemand-1"), timeout=5)  # the job starts on the spot node
        spec = job_spec(["sleep", "120"], nodes=1, preemptible=True)
        spec.resources.gpu_models.append("L4")
        job = fleet.submit(spec).job
        job = fleet.wait_job(job.id, lambda j: j.state == lc.RUNNING)
        assert job.assignments[0].node == "spot-1"
        api.nodes.UncordonNode(npb.UncordonNodeRequest(name="ondemand-1"), timeout=5)

        meta.aws_action = {
            "action": "terminate",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120)),
        }

        moved = fleet.wait_job(
            job.id, lambda j: j.state == lc.RUNNING and j.assignments[0].node == "ondemand-1", timeout_s=60
        )
        edge = next(t for t in moved.history if t.to_state == lc.PREEMPTED)
        assert "spot interruption" in edge.message, edge  # the job says why it moved
        node = api.nodes.GetNode(npb.GetNodeRequest(name="spot-1"), timeout=5)
        assert node.cordoned and node.state in (pb.NODE_STATE_DRAINING, pb.NODE_STATE_DRAINED)
        assert any(r[1] == "/latest/api/token" for r in meta.requests)  # IMDSv2: a token first
    finally:
        meta.stop()
