"""Build ``pb.Node`` / ``pb.Job`` records from the simulator's plain descriptions.

The same builders serve ``gpufleet sim`` (cluster.json / jobs.jsonl), the benchmark and the tests, so all of
them exercise the scheduler through the exact protobuf records the coordinator stores.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpufleet.common import gpu_models, node_labels
from gpufleet.common.jobspec import PRIORITY_CLASSES
from gpufleet.proto.v1 import types_pb2 as pb

DEFAULT_MEMORY_MIB = 16384


def make_node(
    name: str,
    gpu_model: str = "H100-80GB",
    gpus: int = 8,
    cpu_milli: int = 96_000,
    memory_mib: int = 1_048_576,
    *,
    gpu_memory_mib: int = 0,
    provider: str = "sim",
    region: str = "sim-1",
    zone: str = "sim-1a",
    spot: bool = False,
    price_micros: int = -1,
    mig_layouts: Sequence[Sequence[str]] = (),
    numa_per: int = 4,
    nvlink: bool = True,
    cordoned: bool = False,
    state: pb.NodeState.ValueType = pb.NODE_STATE_READY,
    labels: dict[str, str] | None = None,
) -> pb.Node:
    """A node with ``gpus`` GPUs of ``gpu_model``; the first ``len(mig_layouts)`` GPUs are MIG-enabled with
    those layouts (an empty layout = MIG enabled, no slices yet)."""
    model = gpu_models.MODELS.get(gpu_model)
    mem = gpu_memory_mib or (model.memory_mib if model else DEFAULT_MEMORY_MIB)
    inv = pb.NodeInventory(
        name=name,
        hostname=name,
        address=f"{name}.sim",
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        provider=provider,
        region=region,
        zone=zone,
        spot=spot,
        gpu_backend="simulated",
    )
    if labels:
        inv.labels.update(labels)
    if price_micros >= 0:
        inv.labels[node_labels.PRICE] = str(price_micros)
    for g in range(gpus):
        numa = g // numa_per if numa_per else 0
        gpu = inv.gpus.add(
            index=g,
            uuid=f"GPU-{name}-{g}",
            model=gpu_model,
            product_name=gpu_model,
            memory_mib=mem,
            mig_capable=bool(model and model.mig_capable),
            healthy=True,
            numa_node=numa,
            mps_available=True,
        )
        if nvlink:
            gpu.nvlink_peers.extend(p for p in range(gpus) if p != g and (p // numa_per if numa_per else 0) == numa)
        if g < len(mig_layouts):
            gpu.mig_mode = pb.MIG_MODE_ENABLED
            set_mig_layout(gpu, mig_layouts[g], name)
        else:
            gpu.mig_mode = pb.MIG_MODE_DISABLED
    return pb.Node(inventory=inv, state=state, cordoned=cordoned)


def set_mig_layout(
    gpu: pb.Gpu,
    profiles: Sequence[str],
    node_name: str,
    keep: Sequence[pb.MigInstance] = (),
    starts: Sequence[int] = (),
) -> None:
    """Lay out ``profiles`` on ``gpu`` (at ``starts`` when given, else planned by gpu_models' placement rules);
    instances in ``keep`` (same profile and start) keep their uuid and job."""
    model = gpu_models.get_model(gpu.model)
    if starts:
        placed = [gpu_models.PlacedInstance(model.profile(p), s) for p, s in zip(profiles, starts, strict=True)]
    else:
        placed = gpu_models.plan_layout(model, profiles) if profiles else []
    kept = {(m.profile, m.placement_start): m for m in keep}
    del gpu.mig_instances[:]
    for gi, p in enumerate(placed, start=1):
        old = kept.get((p.profile.name, p.start))
        gpu.mig_instances.add(
            profile=p.profile.name,
            gi_id=old.gi_id if old else gi,
            ci_id=0,
            placement_start=p.start,
            placement_size=p.profile.memory_slices,
            uuid=old.uuid if old else f"MIG-{node_name}-{gpu.index}-{p.profile.name}-{p.start}",
            memory_mib=p.profile.memory_mib,
            job_id=old.job_id if old else "",
        )


def priority_value(priority: str | int | None) -> int:
    if priority is None or priority == "":
        return PRIORITY_CLASSES["normal"]
    if isinstance(priority, int):
        return priority
    return PRIORITY_CLASSES[priority]


def make_job(
    job_id: str,
    gpus: float = 1,
    cpu_milli: int = 1000,
    memory_mib: int = 1024,
    gpu_model: str | Sequence[str] | None = None,
    *,
    gpu_milli: int | None = None,
    gpu_memory_mib: int = 0,
    mig_profile: str = "",
    nodes: int = 1,
    team: str = "",
    priority: str | int | None = None,
    preemptible: bool = False,
    deadline_ms: int = 0,
    max_runtime_s: int = 0,
    min_runtime_s: int = 0,
    created_ms: int = 0,
    started_ms: int = 0,
    regions: Sequence[str] = (),
    providers: Sequence[str] = (),
    spot: pb.SpotPolicy.ValueType = pb.SPOT_POLICY_UNSPECIFIED,
    max_price_micros: int = 0,
    spread: bool = False,
) -> pb.Job:
    """A pending job. ``gpus`` is 0, a fraction below 1, or a whole count (``gpu_milli`` overrides it)."""
    milli = gpu_milli if gpu_milli is not None else (0 if mig_profile else round(gpus * 1000))
    models = [m for m in gpu_model.split("|") if m] if isinstance(gpu_model, str) else list(gpu_model or ())
    prio_name = priority if isinstance(priority, str) else ""
    spec = pb.JobSpec(
        name=job_id,
        team=team,
        command=["true"],
        resources=pb.Resources(
            gpu_milli=milli,
            gpu_memory_mib=gpu_memory_mib,
            gpu_models=models,
            mig_profile=mig_profile,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
        ),
        nodes=nodes,
        priority=prio_name,
        preemptible=preemptible,
        deadline_ms=deadline_ms,
        max_runtime_s=max_runtime_s,
        min_runtime_s=min_runtime_s,
        placement=pb.PlacementPolicy(
            providers=list(providers),
            regions=list(regions),
            spot=spot,
            max_price_micros_per_gpu_hour=max_price_micros,
            spread=spread,
        ),
    )
    return pb.Job(
        id=job_id,
        spec=spec,
        state=pb.JOB_STATE_PENDING,
        created_ms=created_ms,
        started_ms=started_ms,
        priority_value=priority_value(priority),
    )


def placed(job: pb.Job, assignments: Sequence[pb.TaskAssignment], started_ms: int = 0) -> pb.Job:
    """A copy of ``job`` as the coordinator stores it once placed (what ``ClusterState.bind`` takes)."""
    out = pb.Job()
    out.CopyFrom(job)
    del out.assignments[:]
    out.assignments.extend(assignments)
    out.state = pb.JOB_STATE_RUNNING
    out.started_ms = started_ms
    return out
