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
) -> pb.Job:
    spec = pb.JobSpec(
        name=job_id,
        command=["true"],
        resources=pb.Resources(
            gpu_milli=int(gpus * 1000), gpu_models=[model] if model else [], cpu_milli=cpu_milli, memory_mib=memory_mib
        ),
        nodes=nodes,
        priority="normal",
        preemptible=preemptible,
        placement=pb.PlacementPolicy(spot=spot, max_price_micros_per_gpu_hour=max_price_per_gpu, regions=list(regions)),
    )
    return pb.Job(id=job_id, spec=spec, state=state, priority_value=100)
