"""Small catalogs and job builders for autoscaler tests (prices chosen so the cheapest answer is obvious)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpufleet.coordinator.providers.catalog import Catalog, parse_catalog
from gpufleet.proto.v1 import types_pb2 as pb

D = 1_000_000  # one dollar in micro-dollars


def _t(
    name: str, model: str, gpus: int, vcpus: int, mem_gib: int, prices: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    return {
        "name": name,
        "gpu_model": model,
        "gpu_count": gpus,
        "vcpus": vcpus,
        "memory_mib": mem_gib * 1024,
        "prices": {r: {"on_demand": int(od * D), "spot": int(sp * D)} for r, (od, sp) in prices.items()},
    }


def small_catalog() -> Catalog:
    doc = {
        "provider": "fake",
        "as_of": "2026-11-01",
        "source": "test",
        "regions": {"a": {"zones": ["a1"]}, "b": {"zones": ["b1"]}},
        "instance_types": [
            _t("l4x1", "L4", 1, 8, 32, {"a": (1.0, 0.4), "b": (1.1, 0.5)}),
            _t("l4x4", "L4", 4, 48, 192, {"a": (3.5, 1.4), "b": (3.8, 1.5)}),
            _t("h100x8", "H100-80GB", 8, 192, 2048, {"a": (80.0, 30.0), "b": (90.0, 35.0)}),
        ],
    }
    return Catalog([parse_catalog(doc, "test")])


def job(
    job_id: str,
    gpus: float = 1,
    *,
    model: str = "",
    nodes: int = 1,
    spot: pb.SpotPolicy.ValueType = pb.SPOT_POLICY_UNSPECIFIED,
    max_price_per_gpu: int = 0,
    regions: Sequence[str] = (),
    cpu_milli: int = 1000,
    memory_mib: int = 1024,
    preemptible: bool = True,
    state: pb.JobState.ValueType = pb.JOB_STATE_PENDING,
    mig_profile: str = "",
) -> pb.Job:
    spec = pb.JobSpec(
        name=job_id,
        command=["true"],
        resources=pb.Resources(
            gpu_milli=0 if mig_profile else int(gpus * 1000),
            gpu_models=[model] if model else [],
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            mig_profile=mig_profile,
        ),
        nodes=nodes,
        priority="normal",
        preemptible=preemptible,
        placement=pb.PlacementPolicy(spot=spot, max_price_micros_per_gpu_hour=max_price_per_gpu, regions=list(regions)),
    )
    return pb.Job(id=job_id, spec=spec, state=state, priority_value=100)


class FakeCluster:
    """The coordinator side the autoscaler talks to: nodes, pending and running jobs, cordon and drain.

    ``join(instance)`` plays an agent registering; ``drain`` requeues the node's jobs (what the coordinator's
    drainer does) and records the call order.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, pb.Node] = {}
        self.pending: list[pb.Job] = []
        self.running: list[pb.Job] = []
        self.calls: list[tuple[str, str]] = []

    def join(self, name: str, gpu_model: str = "L4", gpus: int = 1, spot: bool = False) -> pb.Node:
        inv = pb.NodeInventory(
            name=name, hostname=name, address=f"{name}.test", cpu_milli=48_000, memory_mib=196_608, spot=spot
        )
        for g in range(gpus):
            inv.gpus.add(index=g, uuid=f"GPU-{name}-{g}", model=gpu_model, memory_mib=23034, healthy=True)
        node = pb.Node(inventory=inv, state=pb.NODE_STATE_READY, capacity_gpu_milli=gpus * 1000)
        self.nodes[name] = node
        return node

    def leave(self, name: str) -> None:
        self.nodes.pop(name, None)

    def run_on(self, job: pb.Job, node: str, gpus: int = 1) -> None:
        job.state = pb.JOB_STATE_RUNNING
        job.assignments.add(
            node=node,
            devices=[
                pb.DeviceAssignment(gpu_index=i, mode=pb.SHARING_MODE_EXCLUSIVE, gpu_milli=1000) for i in range(gpus)
            ],
        )
        self.running.append(job)
        self.nodes[node].job_ids.append(job.id)
        self.nodes[node].allocated_gpu_milli += gpus * 1000
        self.pending = [j for j in self.pending if j.id != job.id]

    async def cordon(self, node: str, reason: str) -> None:
        self.calls.append(("cordon", node))
        if node in self.nodes:
            self.nodes[node].cordoned = True

    async def drain(self, node: str, reason: str, deadline_ms: int) -> None:
        self.calls.append(("drain", node))
        moved = [j for j in self.running if any(a.node == node for a in j.assignments)]
        for j in moved:
            del j.assignments[:]
            j.state = pb.JOB_STATE_PENDING
            self.pending.append(j)
        self.running = [j for j in self.running if j not in moved]
        if node in self.nodes:
            del self.nodes[node].job_ids[:]
            self.nodes[node].allocated_gpu_milli = 0

    def ports(self):  # type: ignore[no-untyped-def]
        from gpufleet.coordinator.autoscaler.reconciler import ClusterPorts

        return ClusterPorts(
            nodes=lambda: list(self.nodes.values()),
            pending_jobs=lambda: list(self.pending),
            cordon=self.cordon,
            drain=self.drain,
            running_jobs=lambda: list(self.running),
        )
